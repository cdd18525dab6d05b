// khala-js against a real `openagents-runtime serve` (embedded journal): hydration,
// subscription from the watermark, idempotent apply, persistence across a server kill and
// restart, stale_cursor after `reproject --all`, token refresh, and ownership.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { KhalaClient, MemoryStorage, backoffDelay, tokenClaims, States } from "../src/khala.js";
import { Serve, eventually } from "./serve.mjs";

const RUNS = "runtime.run_summaries";
const key = (run) => `runtime/run_summary:${run}`;

let serve;
before(async () => {
  serve = await Serve.start(["--sync-tailer-poll", "200ms"]);
});
after(async () => {
  await serve.stop();
});

/** A client for `user` recording every doc event. */
function client(user, { storage = new MemoryStorage(), getToken, hydratePageSize } = {}) {
  const khala = new KhalaClient({
    url: serve.base,
    hydratePageSize,
    topics: [RUNS],
    storage,
    WebSocket,
    backoff: { min: 50, max: 500 },
    getToken: getToken || (() => serve.syncToken(user)),
  });
  const seen = [];
  const signals = [];
  const states = [];
  const errors = [];
  khala.on("error", (error) => errors.push(`${error.code}: ${error.message}`));
  khala.on("doc", (doc) => seen.push(doc));
  khala.on("signal", (signal) => signals.push(signal));
  khala.on("state", ({ state }) => states.push(state));
  return { khala, seen, signals, states, errors, storage };
}

/** `eventually`, reporting the client's states, signals and errors when it times out. */
async function until(c, what, probe) {
  try {
    return await eventually(what, probe);
  } catch (error) {
    const { khala, states, signals, errors } = c;
    throw new Error(`${error.message}: ${JSON.stringify({ state: khala.state, states, signals, errors })}`);
  }
}

const status = (khala, run) => khala.docs(RUNS).get(key(run))?.payload?.status;

test("backoff has full jitter within its bounds and grows to the ceiling", () => {
  assert.equal(backoffDelay(0, { min: 100, max: 1000, random: () => 0 }), 100);
  assert.equal(backoffDelay(0, { min: 100, max: 1000, random: () => 0.999999 }), 100);
  assert.equal(backoffDelay(3, { min: 100, max: 1000, random: () => 1 }), 800);
  assert.equal(backoffDelay(30, { min: 100, max: 1000, random: () => 1 }), 1000);
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(5, { min: 100, max: 10000 })));
  assert.ok(spread.size > 10, "delays are jittered");
});

test("hydrates at a watermark, subscribes from it, and follows a run live", async () => {
  await serve.createRun(1, "run_live");
  const c = client(1);
  const { khala, seen, storage } = c;
  await khala.start();
  await until(c, "the hydrated run", () => status(khala, "run_live") === "created");
  await eventually("live", () => khala.state === States.LIVE);
  await serve.startRun(1, "run_live");
  await eventually("running", () => status(khala, "run_live") === "running");
  await serve.frame(1, "run_live", "frm_1");
  await serve.finishRun(1, "run_live");
  await eventually("succeeded", () => status(khala, "run_live") === "succeeded");
  const versions = seen.filter((d) => d.doc_key === key("run_live")).map((d) => d.doc_version);
  assert.deepEqual(versions, [...versions].sort((a, b) => a - b), "versions only grow");
  assert.equal(new Set(versions).size, versions.length, "no version applied twice");
  // The watermark and the documents are persisted together.
  const saved = JSON.parse(
    storage.getItem([...storage.map.keys()].find((k) => k.endsWith(RUNS))),
  );
  assert.equal(saved.watermark, khala.watermark(RUNS));
  assert.equal(saved.docs.find((d) => d.doc_key === key("run_live")).payload.status, "succeeded");
  khala.stop();
});

test("hydrates every page of a topic larger than one page, at the first page's watermark", async () => {
  for (const n of [1, 2, 3, 4, 5]) await serve.createRun(7, `run_page_${n}`);
  const c = client(7, { hydratePageSize: 2 });
  const { khala } = c;
  const pages = [];
  const fetch0 = khala.fetch;
  khala.fetch = (url, init) => {
    if (String(url).includes("/docs")) pages.push(new URL(url).searchParams);
    return fetch0(url, init);
  };
  await khala.start();
  await eventually("all five runs", () => [1, 2, 3, 4, 5].every((n) => status(khala, `run_page_${n}`) === "created"));
  assert.equal(pages.length, 3, "five documents in pages of two");
  assert.equal(pages[0].get("after"), null);
  assert.equal(pages[1].get("watermark"), pages[2].get("watermark"), "every next page names the first page's watermark");
  assert.equal(pages[2].get("after"), key("run_page_4"));
  await eventually("live", () => khala.state === States.LIVE);
  await serve.startRun(7, "run_page_5");
  await eventually("followed live after a paged hydration", () => status(khala, "run_page_5") === "running");
  khala.stop();
});

test("applying the same or an older version again changes nothing", () => {
  const khala = new KhalaClient({ url: "http://x", topics: [RUNS], getToken: () => "t", storage: new MemoryStorage() });
  khala.useToken("a.eyJzdWIiOiJ1c2VyOjEifQ.b");
  const update = (v, w) => ({ topic: RUNS, doc_key: "k", doc_version: v, payload: { v }, payload_hash: "h", watermark: w });
  assert.equal(khala.applyUpdate(update(2, 10)), true);
  assert.equal(khala.applyUpdate(update(2, 10)), false);
  assert.equal(khala.applyUpdate(update(1, 11)), false);
  assert.equal(khala.docs(RUNS).get("k").payload.v, 2);
  assert.equal(khala.watermark(RUNS), 11, "the watermark still advances");
  assert.equal(tokenClaims("a.eyJzdWIiOiJ1c2VyOjEifQ.b").sub, "user:1");
});

test("resumes from the persisted watermark after the server is killed and restarted", async () => {
  const storage = new MemoryStorage();
  const { khala, seen, states } = client(2, { storage });
  await serve.createRun(2, "run_before");
  await khala.start();
  await eventually("run_before", () => status(khala, "run_before") === "created");
  await eventually("live", () => khala.state === States.LIVE);
  const before = khala.watermark(RUNS);
  await serve.kill();
  await eventually("reconnecting", () => states.includes(States.RECONNECTING));
  await serve.restart();
  await serve.createRun(2, "run_after");
  await serve.startRun(2, "run_before");
  await eventually("run_after", () => status(khala, "run_after") === "created");
  await eventually("run_before running", () => status(khala, "run_before") === "running");
  assert.ok(khala.watermark(RUNS) > before);
  // Exactly what the server holds, each version once.
  const hydration = await (
    await fetch(`${serve.base}/sync/v1/topics/${RUNS}/docs`, {
      headers: { authorization: `Bearer ${serve.syncToken(2)}` },
    })
  ).json();
  const held = khala.docs(RUNS);
  assert.deepEqual(
    [...held.values()].map((d) => [d.doc_key, d.doc_version]).sort(),
    hydration.docs.map((d) => [d.doc_key, d.doc_version]).sort(),
  );
  const pairs = seen.map((d) => `${d.doc_key}@${d.doc_version}`);
  assert.equal(new Set(pairs).size, pairs.length, "no update applied twice");
  // No re-hydration was needed: the client resumed by replay.
  khala.stop();
});

test("a rebuild (reproject --all) makes the cursor stale and the client re-hydrates", async () => {
  const { khala, signals } = client(3);
  const resets = [];
  khala.on("reset", (r) => resets.push(r));
  await serve.createRun(3, "run_r1");
  await khala.start();
  await eventually(
    "live",
    () => khala.state === States.LIVE && status(khala, "run_r1") === "created",
  ).catch((error) => {
    throw new Error(`${error.message}: state ${khala.state}, run_r1 ${status(khala, "run_r1")}, signals ${JSON.stringify(signals)}`);
  });
  const hydrations = resets.length;
  serve.reprojectAll();
  await eventually("stale_cursor", () => signals.some((s) => s.code === "stale_cursor"));
  await eventually("re-hydrated", () => resets.length > hydrations);
  await serve.startRun(3, "run_r1");
  await eventually("live after the rebuild", () => status(khala, "run_r1") === "running");
  khala.stop();
});

test("a refused token makes the client ask the app for a new one", async () => {
  const reasons = [];
  const { khala } = client(4, {
    getToken: ({ reason }) => {
      reasons.push(reason);
      return reasons.length === 1 ? "not-a-token" : serve.syncToken(4);
    },
  });
  await serve.createRun(4, "run_t");
  await khala.start();
  await eventually("hydrated with the second token", () => status(khala, "run_t") === "created");
  assert.deepEqual(reasons.slice(0, 2), [null, "unauthorized"]);
  khala.stop();
});

test("another user's runs never reach a client", async () => {
  const { khala, seen } = client(5);
  await serve.createRun(6, "run_of_6");
  await khala.start();
  await eventually("live", () => khala.state === States.LIVE);
  await serve.createRun(6, "run_of_6b");
  await serve.createRun(5, "run_of_5");
  await eventually("own run", () => status(khala, "run_of_5") === "created");
  assert.ok(seen.every((d) => d.payload.owner_user_id === "5"));
  assert.ok(![...khala.docs(RUNS).keys()].some((k) => k.includes("run_of_6")));
  khala.stop();
});

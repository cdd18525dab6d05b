// khala-js's handling of server signals a test cannot easily provoke from a real server on
// demand (slow_consumer disconnect, unauthorized while connected, stale_cursor pushed to a live
// subscription), against a scripted Phoenix v2 peer that speaks the exact frames of
// docs/khala-protocol.md. The real-server behaviour is covered by khala.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";

import { KhalaClient, MemoryStorage, States } from "../src/khala.js";

const RUNS = "runtime.run_summaries";
const TOKEN = "h.eyJzdWIiOiJ1c2VyOjEifQ.s"; // {"sub":"user:1"}

/** A scripted server: records every socket and frame, answers join and subscribe. */
function peer({ hydrationWatermark = 5 } = {}) {
  const sockets = [];
  const hydrations = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen && this.onopen();
      }, 1);
    }
    send(text) {
      const frame = JSON.parse(text);
      this.sent.push(frame);
      const [joinRef, ref, topic, event, payload] = frame;
      const reply = (response, status = "ok") =>
        this.push([joinRef, ref, topic, "phx_reply", { status, response }]);
      if (event === "phx_join") reply({ subscription_id: "sub_1", allowed_topics: [RUNS], current_watermarks: [] });
      if (event === "sync:subscribe") {
        reply({ subscription_id: "sub_1", topics: payload.topics, current_watermarks: [] });
        this.push([joinRef, null, "sync:v1", "sync:update_batch", { updates: [], replay_complete: true, head_watermarks: [] }]);
      }
    }
    push(frame) {
      setTimeout(() => this.onmessage && this.onmessage({ data: JSON.stringify(frame) }), 0);
    }
    close(code) {
      this.readyState = 3;
      this.closedWith = code;
    }
    subscribes() {
      return this.sent.filter((f) => f[3] === "sync:subscribe").map((f) => f[4]);
    }
  }
  const fetch = async (url) => {
    hydrations.push(url);
    return {
      ok: true,
      status: 200,
      json: async () => ({ topic: RUNS, watermark: hydrationWatermark, docs: [] }),
    };
  };
  return { sockets, hydrations, FakeSocket, fetch };
}

function client(p, getToken = () => TOKEN) {
  const khala = new KhalaClient({
    url: "http://runtime.test",
    topics: [RUNS],
    getToken,
    storage: new MemoryStorage(),
    WebSocket: p.FakeSocket,
    fetch: p.fetch,
    backoff: { min: 5, max: 20 },
  });
  const states = [];
  khala.on("state", ({ state }) => states.push(state));
  return { khala, states };
}

const until = async (what, probe, ms = 3000) => {
  const deadline = Date.now() + ms;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
};

const live = (frame) => [frame[0], null, "sync:v1", ...frame.slice(3)];

test("slow_consumer disconnect: waits reconnect_after_ms, then resumes from the watermark", async () => {
  const p = peer();
  const { khala, states } = client(p);
  await khala.start();
  await until("live", () => khala.state === States.LIVE);
  const first = p.sockets[0];
  assert.deepEqual(first.subscribes()[0].resume_after, { [RUNS]: 5 }, "subscribed from the hydration");
  first.push(live(["1", null, "sync:v1", "sync:update_batch", {
    updates: [{ topic: RUNS, doc_key: "k", doc_version: 1, payload: { s: 1 }, payload_hash: "h", watermark: 9 }],
    replay_complete: true, head_watermarks: [],
  }]));
  await until("the update", () => khala.watermark(RUNS) === 9);
  const at = Date.now();
  first.push(["1", null, "sync:v1", "sync:error", {
    code: "slow_consumer", action: "disconnect", reconnect_after_ms: 150, full_resync_required: false,
  }]);
  await until("a second socket", () => p.sockets.length === 2);
  assert.ok(Date.now() - at >= 140, "waited reconnect_after_ms");
  assert.equal(first.closedWith, 1000);
  await until("resubscribed", () => p.sockets[1].subscribes().length === 1);
  assert.deepEqual(p.sockets[1].subscribes()[0].resume_after, { [RUNS]: 9 }, "resumed by replay");
  assert.equal(p.hydrations.length, 1, "no re-hydration");
  assert.ok(states.includes(States.RECONNECTING));
  khala.stop();
});

test("slow_consumer with full_resync_required re-hydrates before subscribing again", async () => {
  const p = peer();
  const { khala } = client(p);
  await khala.start();
  await until("live", () => khala.state === States.LIVE);
  p.sockets[0].push(["1", null, "sync:v1", "sync:error", {
    code: "slow_consumer", action: "disconnect", reconnect_after_ms: 10, full_resync_required: true,
  }]);
  await until("re-hydrated", () => p.hydrations.length === 2);
  await until("resubscribed", () => p.sockets[1]?.subscribes().length === 1);
  khala.stop();
});

test("unauthorized while connected: asks the app for a new token and reconnects with it", async () => {
  const p = peer();
  const reasons = [];
  const { khala, states } = client(p, ({ reason }) => {
    reasons.push(reason);
    return reasons.length === 1 ? TOKEN : "h.eyJzdWIiOiJ1c2VyOjEiLCJqdGkiOiIyIn0.s";
  });
  await khala.start();
  await until("live", () => khala.state === States.LIVE);
  p.sockets[0].push(["1", null, "sync:v1", "sync:error", { code: "unauthorized", message: "token expired" }]);
  await until("a second socket", () => p.sockets.length === 2);
  assert.deepEqual(reasons, [null, "unauthorized"]);
  assert.match(p.sockets[1].url, /token=h\.eyJzdWIiOiJ1c2VyOjEiLCJqdGkiOiIyIn0\.s/);
  assert.ok(states.includes(States.UNAUTHORIZED));
  khala.stop();
});

test("stale_cursor pushed to a live subscription: re-hydrates that topic and subscribes from the new watermark", async () => {
  const p = peer({ hydrationWatermark: 5 });
  const { khala } = client(p);
  const resets = [];
  khala.on("reset", (r) => resets.push(r.watermark));
  await khala.start();
  await until("live", () => khala.state === States.LIVE);
  p.hydrations.length = 0;
  p.sockets[0].push(["1", null, "sync:v1", "sync:error", {
    code: "stale_cursor", full_resync_required: true, reason_codes: ["epoch_changed"],
    stale_topics: [{ topic: RUNS, reason: "epoch_changed", resume_after: 5, retention_floor: 6, head_watermark: 6 }],
  }]);
  await until("re-hydrated", () => p.hydrations.length === 1);
  await until("resubscribed", () => p.sockets[0].subscribes().length === 2);
  assert.equal(p.sockets.length, 1, "same socket");
  assert.equal(resets.length, 2);
  khala.stop();
});

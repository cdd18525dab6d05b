// The console in real Chromium (Debian's `chromium`, driven by playwright-core) against a real
// `serve` on the embedded journal: sign-in with the printed one-time URL, live runs, worker
// leases turning stale then lost, kill -9 and restart with resume from the persisted
// watermark, `reproject --all`, another user's runs never shown. Saves screenshots to docs/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

import { Serve, eventually } from "./serve.mjs";

const CHROMIUM = process.env.OA_CHROMIUM || "/usr/bin/chromium";
// Screenshots go to docs/ when OA_CONSOLE_SCREENSHOTS=docs (how the README's images are made),
// else to a temporary directory (taken either way, so the views render in both widths).
const DOCS =
  process.env.OA_CONSOLE_SCREENSHOTS === "docs"
    ? resolve(dirname(fileURLToPath(import.meta.url)), "../../../docs")
    : mkdtempSync(join(tmpdir(), "console-shots-"));
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && process.env.CI) {
  throw new Error(`CI is set but ${CHROMIUM} is missing (apt-get install chromium chromium-driver)`);
}
const skip = haveChromium ? false : `no Chromium at ${CHROMIUM}`;

let serve;
let context;
let page;
let profile;
const errors = [];

async function launch() {
  const { chromium } = await import("playwright-core");
  profile = mkdtempSync(join(tmpdir(), "console-chromium-"));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

function watchErrors(p) {
  p.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  p.on("pageerror", (error) => errors.push(String(error)));
}

const row = (p, run) => p.locator(`tr[data-run-id="${run}"]`);
const runStatus = (p, run) => row(p, run).getAttribute("data-status", { timeout: 100 }).catch(() => null);

before(async () => {
  if (skip) return;
  serve = await Serve.start(["--lease-sweep-interval-ms", "200", "--sync-tailer-poll", "200ms"]);
  context = await launch();
  page = context.pages()[0] || (await context.newPage());
  watchErrors(page);
});

after(async () => {
  if (context) await context.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (serve) await serve.stop();
});

test("the printed URL signs in, leaves nothing in the URL, and loads without console errors", { skip }, async () => {
  await page.goto(serve.consoleUrl);
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 15000 });
  assert.equal(new URL(page.url()).hash, "#/runs", "the code is gone from the address bar");
  assert.ok(!(await page.evaluate(() => history.length > 1 && location.href.includes("code="))));
  assert.match(await page.locator("#identity").textContent(), /operator/);
  assert.ok(!(await page.evaluate(() => JSON.stringify(localStorage)).then((s) => s.includes(serve.loginCode))));
  // Keyboard: the skip link, then the views, are reachable with Tab; Enter follows a link.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.className), "skip");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.dataset.view), "workers");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => location.hash === "#/workers");
  await page.goto(`${serve.base}/console#/runs`);
  await page.locator('#connection[data-state="live"]').waitFor();
  assert.deepEqual(errors, [], "no console errors");
});

test("a run created over HTTP appears within a second and walks created → running → succeeded", { skip }, async () => {
  const seen = [];
  const started = Date.now();
  await serve.createRun(1, "run_walk");
  await row(page, "run_walk").waitFor({ timeout: 1000 });
  const appearedMs = Date.now() - started;
  seen.push(await runStatus(page, "run_walk"));
  await serve.startRun(1, "run_walk");
  await eventually("running", async () => (await runStatus(page, "run_walk")) === "running", 2000);
  seen.push("running");
  await serve.frame(1, "run_walk", "frm_1");
  await serve.finishRun(1, "run_walk");
  await eventually("succeeded", async () => (await runStatus(page, "run_walk")) === "succeeded", 2000);
  seen.push("succeeded");
  assert.deepEqual(seen, ["created", "running", "succeeded"]);
  assert.ok(appearedMs < 1000, `appeared after ${appearedMs} ms`);
  console.log(`run appeared ${appearedMs} ms after its 201`);
  await page.screenshot({ path: join(DOCS, "console-runs.png") });
  await page.click('a[href="#/runs/run_walk"]');
  await page.locator('h2[data-run-id="run_walk"][data-status="succeeded"]').waitFor();
  // The live transcript (runtime.run_events): every event of the run's stream, in order.
  await page.locator('#transcript li[data-event-type="run.finished"]').waitFor({ timeout: 5000 });
  const transcript = await page
    .locator("#transcript li")
    .evaluateAll((items) => items.map((li) => [Number(li.dataset.seq), li.dataset.eventType]));
  assert.deepEqual(transcript, [[1, "run.started"], [2, "text_delta"], [3, "run.finished"]]);
  assert.match(await page.locator("#transcript").textContent(), /frm_1/);
  await serve.createRun(1, "run_live_transcript");
  await page.goto(`${serve.base}/console#/runs/run_live_transcript`);
  await page.locator('h2[data-run-id="run_live_transcript"]').waitFor();
  await serve.startRun(1, "run_live_transcript");
  await serve.frame(1, "run_live_transcript", "hello-live");
  await page.locator('#transcript li[data-event-type="text_delta"]').waitFor({ timeout: 2000 });
  await page.goto(`${serve.base}/console#/runs/run_walk`);
  await page.locator('#transcript li[data-event-type="run.finished"]').waitFor();
  await page.screenshot({ path: join(DOCS, "console-run.png"), fullPage: true });
  assert.deepEqual(errors, []);
});

test("a worker that stops heartbeating turns stale, then lost", { skip }, async () => {
  await page.goto(`${serve.base}/console#/workers`);
  // An 8 s lease: stale once less than a quarter is left (after 6 s), lost when the sweeper
  // (every 200 ms here) records the expiry (after 8 s).
  await serve.post(1, "codex/workers", { worker_id: "w_quiet", adapter: "desktop", lease_ttl_ms: 8000 });
  const worker = page.locator('tr[data-worker-id="w_quiet"]');
  await worker.waitFor({ timeout: 2000 });
  assert.equal(await worker.getAttribute("data-liveness"), "healthy");
  const states = [];
  const started = Date.now();
  while (Date.now() - started < 15000 && states.at(-1) !== "lost") {
    const state = await worker.getAttribute("data-liveness");
    if (states.at(-1) !== state) states.push(state);
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(states, ["healthy", "stale", "lost"]);
  await serve.post(1, "codex/workers", { worker_id: "w_busy", adapter: "desktop", lease_ttl_ms: 60000 });
  await page.locator('tr[data-worker-id="w_busy"][data-liveness="healthy"]').waitFor({ timeout: 2000 });
  await page.screenshot({ path: join(DOCS, "console-workers.png") });
});

test("the operations view shows projectors, topics and sockets", { skip }, async () => {
  await page.goto(`${serve.base}/console#/ops`);
  await page.locator('tr[data-projector="run_summaries"]').waitFor({ timeout: 5000 });
  await page.locator('tr[data-topic="runtime.run_summaries"]').waitFor();
  assert.match(await page.locator("main").textContent(), /open \(of \d+\)/);
  await page.screenshot({ path: join(DOCS, "console-ops.png"), fullPage: true });
  await page.goto(`${serve.base}/console#/runs`);
});

test("after kill -9 and a restart the page reconnects and resumes from its watermark", { skip }, async () => {
  await page.locator('#connection[data-state="live"]').waitFor();
  const before = await page.evaluate(() => ({ resets: window.consoleDebug.resets }));
  const saved = () =>
    page.evaluate(() => {
      const key = Object.keys(localStorage).find((k) => k.startsWith("oa-console:") && k.endsWith("runtime.run_summaries"));
      return key ? JSON.parse(localStorage.getItem(key)).watermark : null;
    });
  const watermark = await saved();
  assert.ok(watermark > 0, "the watermark is persisted");
  await serve.kill();
  await page.locator('#connection[data-state="reconnecting"]').waitFor({ timeout: 10000 });
  await serve.restart();
  await serve.createRun(1, "run_after_restart");
  await row(page, "run_after_restart").waitFor({ timeout: 15000 });
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 10000 });
  const after_ = await page.evaluate(() => ({ resets: window.consoleDebug.resets, applied: window.consoleDebug.applied }));
  assert.equal(after_.resets, before.resets, "resumed by replay, not by re-hydration");
  assert.equal(new Set(after_.applied).size, after_.applied.length, "no update applied twice");
  assert.ok((await saved()) > watermark);
  // The rows are exactly the server's documents.
  const shown = (await page.locator("tr[data-run-id]").evaluateAll((rows) => rows.map((r) => r.dataset.runId))).sort();
  const token = await page.evaluate(() => sessionStorage.getItem("oa-console-token"));
  const hydration = await (
    await fetch(`${serve.base}/sync/v1/topics/runtime.run_summaries/docs`, { headers: { authorization: `Bearer ${token}` } })
  ).json();
  assert.deepEqual(shown, hydration.docs.map((d) => d.payload.run_id).sort());
});

test("reproject --all makes the page resync by itself", { skip }, async () => {
  const before = await page.evaluate(() => window.consoleDebug.resets);
  serve.reprojectAll();
  await page.waitForFunction((n) => window.consoleDebug.resets > n, before, { timeout: 15000 });
  await serve.createRun(1, "run_after_rebuild");
  await row(page, "run_after_rebuild").waitFor({ timeout: 5000 });
  await page.locator('#connection[data-state="live"]').waitFor();
  assert.equal(await runStatus(page, "run_walk"), "succeeded", "rebuilt documents are shown");
});

test("with another user's token, the first user's runs never appear", { skip }, async () => {
  const other = await context.newPage();
  await other.setViewportSize({ width: 390, height: 844 });
  const userErrors = [];
  other.on("pageerror", (error) => userErrors.push(String(error)));
  await other.goto(`${serve.base}/console`);
  await other.evaluate(() => sessionStorage.clear());
  await other.reload();
  await other.locator("#token-input").fill(serve.syncToken(2, ["runtime.run_summaries"]));
  await other.click('#token-form button[type="submit"]');
  await other.locator('#connection[data-state="live"]').waitFor({ timeout: 15000 });
  assert.match(await other.locator("#identity").textContent(), /user:2 — sees only its own documents/);
  await serve.createRun(2, "run_of_2");
  await serve.createRun(1, "run_of_1_hidden");
  await row(other, "run_of_2").waitFor({ timeout: 5000 });
  await row(page, "run_of_1_hidden").waitFor({ timeout: 5000 });
  await new Promise((r) => setTimeout(r, 500));
  const shown = await other.locator("tr[data-run-id]").evaluateAll((rows) => rows.map((r) => r.dataset.runId));
  assert.deepEqual(shown, ["run_of_2"]);
  await other.screenshot({ path: join(DOCS, "console-phone.png") });
  await other.goto(`${serve.base}/console#/ops`);
  await other.getByText("needs an operator token").waitFor();
  assert.deepEqual(userErrors, []);
  await other.close();
});

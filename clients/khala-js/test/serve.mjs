// Test support: a real `openagents-runtime serve` process on the embedded journal (port 0, a
// fresh data directory), its printed addresses and login code, tokens minted by the binary's own
// `token` commands, and the README's HTTP commands.
//
// The binary is $OA_RUNTIME_BIN (set by the Rust test that runs these), else target/debug's.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN =
  process.env.OA_RUNTIME_BIN || resolve(here, "../../../target/debug/openagents-runtime");

/** A serve process. `restart()` starts a new one on the same data directory and port. */
export class Serve {
  static async start(extra = []) {
    const serve = new Serve(mkdtempSync(join(tmpdir(), "khala-js-")), extra);
    await serve.launch("127.0.0.1:0");
    return serve;
  }

  constructor(dataDir, extra) {
    this.dataDir = dataDir;
    this.extra = extra;
    this.child = null;
    this.base = null;
    this.consoleUrl = null;
  }

  launch(listen) {
    return new Promise((resolvePromise, reject) => {
      const child = spawn(
        BIN,
        ["serve", "--listen", listen, "--data-dir", this.dataDir, "--shutdown-grace-secs", "5", ...this.extra],
        {
          env: { ...process.env, RUST_LOG: process.env.TEST_LOG ? "info" : "warn", DATABASE_URL: "" },
          stdio: ["ignore", "pipe", process.env.TEST_LOG ? "inherit" : "ignore"],
        },
      );
      this.child = child;
      const timer = setTimeout(() => reject(new Error("serve did not print its console URL")), 60000);
      child.on("exit", (code) => reject(new Error(`serve exited early (${code})`)));
      const lines = createInterface({ input: child.stdout });
      lines.on("line", (line) => {
        const listening = line.match(/^openagents-runtime listening on (http:\/\/\S+)/);
        if (listening) this.base = listening[1];
        const console_ = line.match(/^console \(one-time login[^)]*\): (\S+)/);
        if (console_) {
          this.consoleUrl = console_[1];
          clearTimeout(timer);
          resolvePromise(this);
        }
      });
    });
  }

  /** The login code the last start printed. */
  get loginCode() {
    return new URL(this.consoleUrl).hash.replace(/^#code=/, "");
  }

  /** SIGKILL: no drain. */
  kill() {
    this.child.removeAllListeners("exit");
    this.child.kill("SIGKILL");
    return new Promise((r) => this.child.once("close", r));
  }

  /** Starts again on the same data directory and the same port. */
  async restart() {
    const port = new URL(this.base).port;
    for (let i = 0; ; i += 1) {
      try {
        await this.launch(`127.0.0.1:${port}`);
        return this;
      } catch (error) {
        if (i >= 20) throw error;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  async stop() {
    if (this.child && this.child.exitCode === null) await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  cli(args) {
    return execFileSync(BIN, args, { encoding: "utf8", env: { ...process.env, DATABASE_URL: "" } }).trim();
  }

  /** A single-use internal signature token for `user`. */
  internalToken(user) {
    return this.cli(["token", "internal", "--data-dir", this.dataDir, "--user-id", String(user)]);
  }

  /** A sync token for `user` over `scopes`. */
  syncToken(user, scopes = ["runtime.run_summaries"], ttl = "300s") {
    return this.cli([
      "token", "mint", "--data-dir", this.dataDir, "--subject", `user:${user}`,
      "--scopes", scopes.join(","), "--ttl", ttl,
    ]);
  }

  /** POSTs `body` to `/internal/v1/<path>` as `user`; throws unless 2xx. */
  async post(user, path, body) {
    const response = await fetch(`${this.base}/internal/v1/${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-oa-user-id": String(user),
        "x-oa-runtime-signature": this.internalToken(user),
      },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`POST ${path} as ${user}: ${response.status} ${text}`);
    return JSON.parse(text);
  }

  createRun(user, run, thread = "thread_1") {
    return this.post(user, "runs", { run_id: run, thread_id: thread });
  }
  startRun(user, run, thread = "thread_1") {
    return this.post(user, `runs/${run}/start`, { thread_id: thread });
  }
  frame(user, run, frame, thread = "thread_1") {
    return this.post(user, `runs/${run}/frames`, {
      thread_id: thread, frame_id: frame, type: "text_delta", payload: { delta: frame },
    });
  }
  finishRun(user, run, status = "succeeded", thread = "thread_1") {
    return this.post(user, `runs/${run}/finish`, { thread_id: thread, status });
  }

  /** `reproject --all` against this data directory (a new epoch per topic). */
  reprojectAll() {
    return this.cli(["reproject", "--all", "--data-dir", this.dataDir]);
  }

  /** Exchanges the printed login code for an operator token. */
  async login(code = this.loginCode) {
    const response = await fetch(`${this.base}/console/api/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ code }),
    });
    return { status: response.status, body: await response.json() };
  }
}

/** Polls `probe` until it returns a truthy value (at most `ms`). */
export async function eventually(what, probe, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

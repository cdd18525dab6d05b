// Drives the Khala gateway with the official Phoenix Channels client (the `phoenix` npm
// package), as web and mobile clients do: connect with vsn=2.0.0, join sync:v1, subscribe,
// receive sync:update_batch pushes.
//
// Usage: node phoenix_client.mjs <ws://host:port> <token> <topic>
// Prints one JSON line per step on stdout ("ready" after the replay batch, then "done" with
// everything received) and exits 0; exits 1 with {"error": ...} on any failure.
import { Socket } from "phoenix";
import WebSocket from "ws";

const [base, token, topic] = process.argv.slice(2);
const out = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const fail = (error) => {
  out({ error: String(error) });
  process.exit(1);
};
setTimeout(() => fail("timed out"), 20000);

const socket = new Socket(`${base}/sync/socket`, {
  transport: WebSocket,
  params: { token, client: "phoenix-js-test", protocol_version: "khala.ws.v1", schema_version: "1" },
  heartbeatIntervalMs: 500,
  reconnectAfterMs: () => 60000,
  logger: () => {},
});
socket.onError((error) => fail(`socket error: ${error && error.message ? error.message : error}`));
socket.connect();

const channel = socket.channel("sync:v1", {});
const batches = [];
let join;
let subscribe;
let heartbeats = 0;

channel.on("sync:update_batch", (payload) => {
  batches.push(payload);
  const updates = batches.flatMap((b) => b.updates);
  if (batches.length === 1) {
    out({ step: "ready", updates: updates.length });
  }
  if (updates.some((u) => u.doc_key === "live-doc")) {
    // Prove Phoenix heartbeats are answered too before finishing.
    const check = () => {
      if (heartbeats > 0) {
        out({ step: "done", join, subscribe, batches, heartbeats });
        process.exit(0);
      }
      setTimeout(check, 100);
    };
    check();
  }
});
channel.on("sync:error", (payload) => fail(`sync:error ${JSON.stringify(payload)}`));
socket.onMessage((message) => {
  if (message.topic === "phoenix" && message.event === "phx_reply" && message.payload.status === "ok") {
    heartbeats += 1;
  }
});

channel
  .join()
  .receive("ok", (reply) => {
    join = reply;
    channel
      .push("sync:subscribe", { topics: [topic], resume_after: { [topic]: 0 } })
      .receive("ok", (reply) => {
        subscribe = reply;
      })
      .receive("error", (error) => fail(`subscribe error ${JSON.stringify(error)}`))
      .receive("timeout", () => fail("subscribe timeout"));
  })
  .receive("error", (error) => fail(`join error ${JSON.stringify(error)}`))
  .receive("timeout", () => fail("join timeout"));

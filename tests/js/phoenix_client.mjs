// Drives the Khala gateway with the official Phoenix Channels client (the `phoenix` npm
// package), as web and mobile clients do: (optionally hydrate over HTTP first,) connect with
// vsn=2.0.0, join sync:v1, subscribe, receive sync:update_batch pushes.
//
// Usage: node phoenix_client.mjs <ws://host:port> <token> <topic> [options JSON]
// Options (all optional):
//   hydrate_url    http://host:port: GET /sync/v1/topics/<topic>/docs first and subscribe from
//                  the hydration's watermark (default: subscribe from watermark 0)
//   until_doc_key  finish once an update for this doc key arrives (default "live-doc")
//   until_status   ...whose payload.status is this
//   timeout_ms     give up after this long (default 20000)
// Prints one JSON line per step on stdout ("hydrated" with the hydration, "ready" after the
// first batch, then "done" with everything received) and exits 0; exits 1 with
// {"error": ...} on any failure.
import { Socket } from "phoenix";
import WebSocket from "ws";

const [base, token, topic, optionsJson] = process.argv.slice(2);
const options = optionsJson ? JSON.parse(optionsJson) : {};
const untilDocKey = options.until_doc_key ?? "live-doc";
const out = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const fail = (error) => {
  out({ error: String(error) });
  process.exit(1);
};
setTimeout(() => fail("timed out"), options.timeout_ms ?? 20000);

const isDone = (update) =>
  update.doc_key === untilDocKey &&
  (options.until_status === undefined ||
    (update.payload && update.payload.status === options.until_status));

async function hydrate() {
  if (!options.hydrate_url) {
    return 0;
  }
  const response = await fetch(`${options.hydrate_url}/sync/v1/topics/${topic}/docs`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const body = await response.json();
  if (response.status !== 200) {
    fail(`hydration failed with ${response.status}: ${JSON.stringify(body)}`);
  }
  out({ step: "hydrated", watermark: body.watermark, docs: body.docs });
  return body.watermark;
}

function subscribe(resumeAfter) {
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
  let subscribed;
  let heartbeats = 0;

  channel.on("sync:update_batch", (payload) => {
    batches.push(payload);
    const updates = batches.flatMap((b) => b.updates);
    if (batches.length === 1) {
      out({ step: "ready", updates: updates.length });
    }
    if (updates.some(isDone)) {
      // Prove Phoenix heartbeats are answered too before finishing.
      const check = () => {
        if (heartbeats > 0) {
          out({ step: "done", join, subscribe: subscribed, batches, heartbeats });
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
        .push("sync:subscribe", { topics: [topic], resume_after: { [topic]: resumeAfter } })
        .receive("ok", (reply) => {
          subscribed = reply;
        })
        .receive("error", (error) => fail(`subscribe error ${JSON.stringify(error)}`))
        .receive("timeout", () => fail("subscribe timeout"));
    })
    .receive("error", (error) => fail(`join error ${JSON.stringify(error)}`))
    .receive("timeout", () => fail("join timeout"));
}

hydrate().then(subscribe, (error) => fail(`hydration failed: ${error}`));

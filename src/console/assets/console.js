// The console page: signs in (one-time login code from the URL fragment, or a pasted sync
// token), follows the token's topics with khala.js, and renders runs, workers, payments and the
// operations snapshot. Read-only; plain DOM (textContent only, never innerHTML with data).
import { KhalaClient, MemoryStorage, States, tokenClaims } from "/console/assets/khala.js";

const RUNS = "runtime.run_summaries";
const WORKERS = "runtime.codex_worker_summaries";
const PAYMENTS = "runtime.payments";
const RUN_EVENTS = "runtime.run_events";
const FOLLOWED = [RUNS, WORKERS, PAYMENTS];
const TOKEN_KEY = "oa-console-token";
const RENEW_BEFORE_SECS = 120;

const $ = (sel) => document.querySelector(sel);
const view = $("#view");

/** Test and debugging aid: every applied (doc_key, doc_version), and hydration resets. */
const debug = { applied: [], resets: 0, states: [] };
window.consoleDebug = debug;

// ---- tokens ---------------------------------------------------------------------------------

let token = sessionStorage.getItem(TOKEN_KEY);
let client = null;
/** A second client for run transcripts, started on the first run page (not persisted). */
let transcript = null;

function claims() {
  return (token && tokenClaims(token)) || {};
}

function isOperator() {
  return claims().oa_role === "operator";
}

function secondsLeft() {
  return (claims().exp || 0) - Math.floor(Date.now() / 1000);
}

function grantedTopics() {
  const scopes = claims().oa_sync_scopes;
  return Array.isArray(scopes) ? scopes : String(scopes || "").split(",");
}

function setToken(value) {
  if (!value && transcript) {
    transcript.stop();
    transcript = null;
  }
  token = value;
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  renderIdentity();
}

async function postJson(path, body, bearer) {
  const headers = { "content-type": "application/json" };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const json = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, json };
}

async function exchangeCode(code) {
  const { ok, json } = await postJson("/console/api/login", { code });
  if (!ok) throw new Error((json.error && json.error.message) || "login failed");
  return json.token;
}

async function renew() {
  const { ok, json } = await postJson("/console/api/renew", {}, token);
  if (!ok) throw new Error((json.error && json.error.code) || "renew failed");
  setToken(json.token);
}

/** khala.js asks for a token before each connection attempt. */
async function getToken({ reason }) {
  if (token && isOperator() && (reason === "unauthorized" || secondsLeft() < RENEW_BEFORE_SECS)) {
    try {
      await renew();
    } catch {
      // Expired or revoked: only a new login helps.
      setToken(null);
    }
  } else if (token && (reason === "reauth_required" || (reason === "unauthorized" && secondsLeft() <= 0))) {
    setToken(null);
  }
  if (!token) {
    showLogin("Your token expired or was refused: sign in again.");
    throw Object.assign(new Error("no token"), { code: "unauthorized" });
  }
  return token;
}

// ---- start-up -------------------------------------------------------------------------------

async function main() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const code = fragment.get("code");
  if (code) {
    // Take the code out of the address bar (and history) before anything else.
    history.replaceState(null, "", `${location.pathname}#/runs`);
    try {
      setToken(await exchangeCode(code));
    } catch (error) {
      showLogin(`The login code was refused (${error.message}). Each code works once and for 10 minutes.`);
    }
  }
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token-input").value.trim();
    if (!tokenClaims(value)) {
      $("#login-message").textContent = "That is not a JWT.";
      return;
    }
    $("#token-input").value = "";
    setToken(value);
    startSync();
  });
  $("#logout").addEventListener("click", () => {
    if (client) client.stop();
    client = null;
    setToken(null);
    showLogin("Signed out.");
  });
  window.addEventListener("hashchange", () => {
    render();
    $("#main").focus();
  });
  if (token) startSync();
  else if (!code) showLogin("");
  renderIdentity();
  render();
  setInterval(() => {
    tick();
    if (token && isOperator() && secondsLeft() < RENEW_BEFORE_SECS && secondsLeft() > 0) renew().catch(() => {});
  }, 1000);
}

function showLogin(message) {
  $("#login").hidden = false;
  $("#login-message").textContent = message;
  setConnection(States.UNAUTHORIZED, "signed out");
}

function startSync() {
  $("#login").hidden = true;
  const granted = grantedTopics();
  const topics = FOLLOWED.filter((t) => granted.includes(t));
  if (topics.length === 0) {
    showLogin("This token grants none of the console's topics.");
    return;
  }
  if (client) client.stop();
  if (transcript) transcript.stop();
  transcript = null;
  client = new KhalaClient({
    url: location.origin,
    topics,
    getToken,
    storagePrefix: "oa-console",
    clientName: "openagents-console",
  });
  client.on("state", ({ state, detail }) => {
    debug.states.push(state);
    setConnection(state, detail);
  });
  client.on("doc", (doc) => {
    debug.applied.push(`${doc.doc_key}@${doc.doc_version}`);
    scheduleRender();
  });
  client.on("reset", () => {
    debug.resets += 1;
    scheduleRender();
  });
  client.on("error", (error) => console.warn("khala:", error.code, error.message));
  client.start();
}

// ---- chrome ---------------------------------------------------------------------------------

const STATE_TEXT = {
  idle: "not connected",
  connecting: "connecting…",
  catching_up: "catching up",
  live: "live",
  resyncing: "resyncing",
  reconnecting: "reconnecting…",
  unauthorized: "signed out",
  stopped: "stopped",
};

function setConnection(state, detail) {
  const el = $("#connection");
  el.dataset.state = state;
  $("#connection-text").textContent = STATE_TEXT[state] + (detail && state !== "unauthorized" ? ` (${detail})` : "");
}

function renderIdentity() {
  const c = claims();
  const el = $("#identity");
  $("#logout").hidden = !token;
  if (!token) {
    el.textContent = "";
    return;
  }
  const who = c.oa_role === "operator" ? "operator — sees every principal's documents" : `${c.sub} — sees only its own documents${c.oa_org_id ? ` in org ${c.oa_org_id}` : ""}`;
  const scopes = Array.isArray(c.oa_sync_scopes) ? c.oa_sync_scopes : String(c.oa_sync_scopes || "").split(",");
  el.textContent = `${who}; topics: ${scopes.filter((s) => FOLLOWED.includes(s) || s === RUN_EVENTS).map((s) => s.replace("runtime.", "")).join(", ")}`;
  el.title = `token expires ${new Date((c.exp || 0) * 1000).toLocaleTimeString()}`;
}

// ---- rendering helpers ----------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const badge = (value) => h("span", { class: `badge s-${value}` }, value);

function age(iso) {
  if (!iso) return "—";
  const secs = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
  return `${Math.floor(secs / 86400)}d`;
}

function docs(topic) {
  if (!client || !client.topics.includes(topic)) return null;
  return [...client.docs(topic).values()].map((d) => d.payload).filter(Boolean);
}

function table(caption, headers, rows, emptyText) {
  if (rows.length === 0) return h("p", { class: "empty" }, emptyText);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map(([label, cls]) => h("th", { scope: "col", class: cls }, label)))),
      h("tbody", {}, rows),
    ),
  );
}

function notFollowed(topic) {
  return h("p", { class: "empty" }, `This token does not grant ${topic}.`);
}

// ---- views ----------------------------------------------------------------------------------

const filters = { status: "", text: "" };

function runsView() {
  const all = docs(RUNS);
  if (!all) return [h("h2", {}, "Runs"), notFollowed(RUNS)];
  const statuses = ["", "created", "running", "canceling", "succeeded", "failed", "canceled"];
  const statusSelect = h(
    "select",
    { id: "filter-status" },
    statuses.map((s) => {
      const option = h("option", { value: s }, s || "any");
      if (s === filters.status) option.selected = true;
      return option;
    }),
  );
  statusSelect.addEventListener("change", () => {
    filters.status = statusSelect.value;
    render();
  });
  const text = h("input", { id: "filter-text", type: "search", value: filters.text, placeholder: "run, thread or owner" });
  text.addEventListener("input", () => {
    filters.text = text.value;
    renderRunRows();
  });
  const wrap = h("div", { id: "runs-table" });
  const section = [
    h("h2", {}, "Runs"),
    h("div", { class: "filters", role: "search" }, h("label", {}, "Status", statusSelect), h("label", {}, "Search", text)),
    wrap,
  ];
  queueMicrotask(renderRunRows);
  return section;
}

function renderRunRows() {
  const wrap = document.getElementById("runs-table");
  if (!wrap) return;
  const needle = filters.text.trim().toLowerCase();
  const rows = (docs(RUNS) || [])
    .filter((r) => !filters.status || r.status === filters.status)
    .filter((r) => !needle || [r.run_id, r.thread_id, r.owner_user_id, r.owner_guest_scope, r.org_id].some((v) => v && v.toLowerCase().includes(needle)))
    .sort((a, b) => (b.updated_at || "").localeCompare(a.updated_at || ""))
    .map((r) =>
      h(
        "tr",
        { "data-run-id": r.run_id, "data-status": r.status },
        h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.run_id)),
        h("td", {}, badge(r.status)),
        h("td", { class: "num" }, r.latest_seq),
        h("td", { class: "num" }, r.frame_count),
        h("td", { class: "num hide-narrow" }, r.tool_calls),
        h("td", { class: "hide-narrow" }, r.owner_user_id ? `user:${r.owner_user_id}` : r.owner_guest_scope ? `guest:${r.owner_guest_scope}` : "—"),
        h("td", { class: "num", "data-age": r.created_at }, age(r.created_at)),
      ),
    );
  wrap.replaceChildren(
    table(
      `${rows.length} run(s), newest change first`,
      [["Run"], ["Status"], ["Seq", "num"], ["Frames", "num"], ["Tool calls", "num hide-narrow"], ["Owner", "hide-narrow"], ["Age", "num"]],
      rows,
      "No runs yet. Create one over HTTP (README: “A run's lifecycle with curl”) and it appears here.",
    ),
  );
}

function runView(runId) {
  const all = docs(RUNS);
  if (!all) return [h("h2", {}, `Run ${runId}`), notFollowed(RUNS)];
  const run = all.find((r) => r.run_id === runId);
  if (!run) return [h("h2", {}, `Run ${runId}`), h("p", { class: "empty" }, "Not visible to this token (or not created yet)."), h("p", {}, h("a", { href: "#/runs" }, "All runs"))];
  const facts = [
    ["Status", badge(run.status)],
    ["Thread", run.thread_id],
    ["Seq", run.latest_seq],
    ["Frames", run.frame_count],
    ["Tool calls", run.tool_calls],
    ["Last event", run.last_event_type],
    ["Owner", run.owner_user_id ? `user:${run.owner_user_id}` : run.owner_guest_scope ? `guest:${run.owner_guest_scope}` : "—"],
    ["Org", run.org_id || "—"],
    ["Created", `${run.created_at} (${age(run.created_at)} ago)`],
    ["Started", run.started_at || "—"],
    ["Finished", run.finished_at || "—"],
    ["Cancel", run.cancel_requested ? `requested: ${run.cancel_reason || ""}` : "—"],
    ["Reason", [run.reason_class, run.reason, run.error_code].filter(Boolean).join(" · ") || "—"],
  ];
  const api = `/internal/v1/runs/${encodeURIComponent(run.run_id)}`;
  const artifacts = [
    ["Receipt", `${api}/receipt?thread_id=${encodeURIComponent(run.thread_id)}`],
    ["REPLAY.jsonl", `${api}/replay?thread_id=${encodeURIComponent(run.thread_id)}`],
    ["Audit bundle", `${api}/audit-bundle?thread_id=${encodeURIComponent(run.thread_id)}`],
  ];
  return [
    h("p", {}, h("a", { href: "#/runs" }, "← All runs")),
    h("h2", { "data-run-id": run.run_id, "data-status": run.status }, `Run ${run.run_id}`),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h3", {}, "Transcript"),
    transcriptOf(run),
    h("h3", {}, "Receipt and artifacts"),
    run.receipt
      ? h("dl", { class: "facts" }, [
          ["Schema", run.receipt.schema],
          ["Canonical SHA-256", h("span", { class: "mono" }, run.receipt.canonical_json_sha256)],
          ["Replay hash", h("span", { class: "mono" }, run.receipt.replay_hash)],
          ["Recorded", run.receipt.recorded_at],
        ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))
      : h("p", { class: "empty" }, "No receipt recorded yet (one is recorded when the run finishes)."),
    h("p", {}, "These routes need the internal signature of the run's owner (the browser does not hold it); fetch them with curl:"),
    h("ul", {}, artifacts.map(([label, path]) => h("li", {}, `${label}: `, h("a", { href: path, rel: "noreferrer" }, path)))),
    h("h3", {}, "Metadata"),
    h("pre", {}, JSON.stringify(run.metadata || {}, null, 2)),
  ];
}

function transcriptClient() {
  if (!grantedTopics().includes(RUN_EVENTS)) return null;
  if (!transcript) {
    transcript = new KhalaClient({
      url: location.origin,
      topics: [RUN_EVENTS],
      getToken,
      storage: new MemoryStorage(),
      clientName: "openagents-console-transcript",
    });
    transcript.on("doc", scheduleRender);
    transcript.on("reset", scheduleRender);
    transcript.on("error", (error) => console.warn("khala transcript:", error.code, error.message));
    transcript.start();
  }
  return transcript;
}

/** The run's events (runtime.run_events) in seq order, live. */
function transcriptOf(run) {
  const source = transcriptClient();
  if (!source) return h("p", { class: "empty" }, `This token does not grant ${RUN_EVENTS}.`);
  const events = [...source.docs(RUN_EVENTS).values()]
    .map((d) => d.payload)
    .filter((e) => e && e.run_id === run.run_id)
    .sort((a, b) => a.seq - b.seq);
  if (events.length === 0) return h("p", { class: "empty", id: "transcript" }, "No events yet.");
  const text = (e) => {
    const p = e.payload || {};
    if (typeof p.delta === "string") return p.delta;
    if (typeof p.text === "string") return p.text;
    return JSON.stringify(p);
  };
  return h(
    "ol",
    { class: "transcript", id: "transcript" },
    events.map((e) =>
      h(
        "li",
        { value: e.seq, "data-seq": e.seq, "data-event-type": e.event_type },
        h("span", { class: "badge" }, e.event_type),
        " ",
        h("span", { class: "mono" }, text(e)),
        " ",
        h("time", { datetime: e.occurred_at, class: "empty" }, new Date(e.occurred_at).toLocaleTimeString()),
      ),
    ),
  );
}

/** healthy / stale / lost / stopped, as of now: stale once less than a quarter of the lease is
 *  left (a heartbeating worker renews at half), lost when the sweeper recorded it. */
function liveness(w, now = Date.now()) {
  if (w.heartbeat_state === "lost" || w.status === "lost") return "lost";
  if (w.status === "stopped" || w.status === "failed" || w.heartbeat_state === "stopped") return "stopped";
  const expires = Date.parse(w.lease_expires_at);
  const from = Date.parse(w.last_heartbeat_at || w.started_at || w.updated_at);
  if (Number.isNaN(expires)) return w.heartbeat_state || "unknown";
  if (now >= expires) return "stale";
  if (!Number.isNaN(from) && expires > from && expires - now < (expires - from) / 4) return "stale";
  return "healthy";
}

function workersView() {
  const all = docs(WORKERS);
  if (!all) return [h("h2", {}, "Workers"), notFollowed(WORKERS)];
  const now = Date.now();
  const rows = all
    .sort((a, b) => a.worker_id.localeCompare(b.worker_id))
    .map((w) => {
      const state = liveness(w, now);
      const left = Math.round((Date.parse(w.lease_expires_at) - now) / 1000);
      return h(
        "tr",
        { "data-worker-id": w.worker_id, "data-liveness": state, "data-status": w.status },
        h("td", {}, w.worker_id),
        h("td", {}, badge(w.status)),
        h("td", {}, badge(state)),
        h("td", { class: "num" }, age(w.last_heartbeat_at || w.started_at)),
        h("td", { class: "num" }, state === "lost" || state === "stopped" ? "—" : left >= 0 ? `${left}s` : `expired ${-left}s ago`),
        h("td", { class: "hide-narrow" }, w.adapter),
        h("td", { class: "hide-narrow" }, w.owner_user_id ? `user:${w.owner_user_id}` : w.owner_guest_scope ? `guest:${w.owner_guest_scope}` : "—"),
      );
    });
  return [
    h("h2", {}, "Workers"),
    table(`${rows.length} worker(s)`, [["Worker"], ["Status"], ["Lease"], ["Last heartbeat", "num"], ["Lease left", "num"], ["Adapter", "hide-narrow"], ["Owner", "hide-narrow"]], rows, "No workers yet."),
  ];
}

function paymentsView() {
  const all = docs(PAYMENTS);
  if (!all) return [h("h2", {}, "Payments"), notFollowed(PAYMENTS)];
  const msat = (v) => (v === null || v === undefined ? "—" : `${v.toLocaleString()} msat`);
  const rows = all
    .sort((a, b) => (b.updated_at || "").localeCompare(a.updated_at || ""))
    .map((p) =>
      h(
        "tr",
        { "data-payment-id": p.payment_id, "data-status": p.status },
        h("td", { class: "mono" }, `${p.payment_id.slice(0, 16)}…`),
        h("td", {}, badge(p.status)),
        h("td", {}, p.host),
        h("td", { class: "num" }, msat(p.quoted_amount_msats)),
        h("td", { class: "num hide-narrow" }, msat(p.settled_amount_msats)),
        h("td", { class: "num hide-narrow" }, msat(p.fee_msats)),
        h("td", { class: "hide-narrow" }, p.run_id || "—"),
        h("td", { class: "num" }, age(p.updated_at)),
      ),
    );
  return [
    h("h2", {}, "Payments"),
    h("p", { class: "empty" }, "Payment hashes and status only: documents never carry a preimage, an invoice or a credential."),
    table(`${rows.length} payment(s)`, [["Payment hash"], ["Status"], ["Host"], ["Quoted", "num"], ["Settled", "num hide-narrow"], ["Fee", "num hide-narrow"], ["Run", "hide-narrow"], ["Updated", "num"]], rows, "No payments yet."),
  ];
}

let ops = null;
let opsError = null;
let opsTimer = null;

async function loadOps() {
  if (!token) return;
  try {
    const response = await fetch("/ops/v1/status", { headers: { authorization: `Bearer ${token}` } });
    const body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    ops = body;
    opsError = null;
  } catch (error) {
    opsError = error.message;
  }
  if (route().name === "ops") render();
}

function opsView() {
  if (!isOperator()) return [h("h2", {}, "Operations"), h("p", { class: "empty" }, "The operations snapshot needs an operator token.")];
  if (!opsTimer) {
    loadOps();
    opsTimer = setInterval(loadOps, 2000);
  }
  if (!ops) return [h("h2", {}, "Operations"), h("p", { class: "empty" }, opsError || "Loading…")];
  const facts = [
    ["Readiness", [badge(ops.readiness.status), ops.readiness.reason ? ` ${ops.readiness.reason}` : ""]],
    ["Journal", `${ops.journal_backend}, head position ${ops.journal.head_position}`],
    ["Sync sockets", `${ops.sync.sockets_open} open (of ${ops.sync.max_connections}); ${ops.sync.sockets_total} since start`],
    ["Updates sent", `${ops.sync.updates_sent} in ${ops.sync.batches_sent} batches`],
    ["Slow consumers", `${ops.sync.slow_consumer_throttles} throttled, ${ops.sync.slow_consumer_disconnects} disconnected`],
    ["Version", ops.version],
    ["Snapshot", ops.generated_at],
  ];
  return [
    h("h2", {}, "Operations"),
    opsError ? h("p", { role: "alert" }, `Last refresh failed: ${opsError}`) : null,
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h3", {}, "Projectors"),
    table("Position and lag per projector", [["Projector"], ["Topic", "hide-narrow"], ["Position", "num"], ["Lag", "num"], ["Projected", "num hide-narrow"], ["Lease"], ["Rebuild", "hide-narrow"]],
      ops.projectors.map((p) => h("tr", { "data-projector": p.projector },
        h("td", {}, p.projector), h("td", { class: "hide-narrow" }, p.topic), h("td", { class: "num" }, p.position),
        h("td", { class: "num" }, p.lag_events), h("td", { class: "num hide-narrow" }, p.events_projected),
        h("td", {}, p.lease_owner ? "held" : "free"),
        h("td", { class: "hide-narrow" }, p.rebuild_events !== null ? `in progress (${p.rebuild_events})` : p.rebuild_requested ? "requested" : p.last_rebuilt_at || "—"))),
      "No projectors registered."),
    h("h3", {}, "Topics"),
    table("Heads, retention floors and epochs", [["Topic"], ["Head", "num"], ["Retention floor", "num"], ["Epoch", "num"], ["Retention", "num hide-narrow"], ["Replay budget", "num hide-narrow"]],
      ops.topics.map((t) => h("tr", { "data-topic": t.topic },
        h("td", {}, t.topic), h("td", { class: "num" }, t.head_watermark), h("td", { class: "num" }, t.retention_floor),
        h("td", { class: "num" }, t.epoch), h("td", { class: "num hide-narrow" }, t.retention_secs === null ? "—" : `${Math.round(t.retention_secs / 3600)}h`),
        h("td", { class: "num hide-narrow" }, t.replay_budget ?? "—"))),
      "No topics."),
  ];
}

// ---- routing --------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  if (name === "runs" && rest.length > 0) return { name: "run", id: decodeURIComponent(rest.join("/")) };
  if (["runs", "workers", "payments", "ops"].includes(name)) return { name };
  return { name: "runs" };
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function render() {
  const r = route();
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.dataset.view === (r.name === "run" ? "runs" : r.name);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (r.name !== "ops" && opsTimer) {
    clearInterval(opsTimer);
    opsTimer = null;
  }
  if (!token) {
    view.replaceChildren();
    return;
  }
  // Keep keyboard focus and typed filters across live re-renders.
  const focused = document.activeElement && document.activeElement.id;
  const selection = focused === "filter-text" ? document.activeElement.selectionStart : null;
  const content =
    r.name === "run" ? runView(r.id) : r.name === "workers" ? workersView() : r.name === "payments" ? paymentsView() : r.name === "ops" ? opsView() : runsView();
  view.replaceChildren(...content.filter(Boolean));
  if (focused) {
    const again = document.getElementById(focused);
    if (again) {
      again.focus();
      if (selection !== null) again.setSelectionRange(selection, selection);
    }
  }
}

/** Once a second: ages and lease states move with the clock. */
function tick() {
  const r = route();
  if (r.name === "workers") render();
  else if (r.name === "runs") renderRunRows();
}

main();

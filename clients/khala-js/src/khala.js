// Khala sync client (ES module, no dependencies, browsers and Node >= 20).
//
// It does the client side of docs/khala-protocol.md: hydrate a topic over HTTP at a watermark,
// subscribe from that watermark over Phoenix Channels v2 (`sync:v1`), apply updates
// idempotently by doc_key/doc_version, persist documents and watermarks together (pluggable
// storage; localStorage in the browser), and handle every server signal:
//   stale_cursor                 -> re-hydrate the topic, replace its documents, subscribe again
//   slow_consumer throttle       -> reported; disconnect -> back off reconnect_after_ms, resume
//   unauthorized/reauth_required -> ask the app for a new token (getToken({reason})), reconnect
//   socket loss / internal       -> reconnect with exponential backoff and full jitter
// The served copy of this file is embedded in the runtime binary (/console/assets/khala.js).

/** Client states, in the order a healthy connection walks them. */
export const States = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CATCHING_UP: "catching_up",
  LIVE: "live",
  RESYNCING: "resyncing",
  RECONNECTING: "reconnecting",
  UNAUTHORIZED: "unauthorized",
  STOPPED: "stopped",
});

const CHANNEL = "sync:v1";
const VSN = "2.0.0";

/** An in-memory storage with the localStorage interface (the default outside browsers). */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }
  setItem(key, value) {
    this.map.set(key, String(value));
  }
  removeItem(key) {
    this.map.delete(key);
  }
}

/** A refused or failed request, with the server's machine-readable code. */
export class KhalaError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "KhalaError";
    this.code = code;
    this.details = details;
  }
}

/** Decodes a JWT's claims without verifying it (for display and storage scoping only). */
export function tokenClaims(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const text =
      typeof atob === "function"
        ? decodeURIComponent(
            Array.from(atob(padded), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
          )
        : Buffer.from(padded, "base64").toString("utf8");
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Full-jitter exponential backoff: a random delay in [min, min(max, min * 2^attempt)]. */
export function backoffDelay(attempt, { min = 250, max = 10000, random = Math.random } = {}) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 20));
  return Math.round(min + random() * Math.max(0, ceiling - min));
}

function defaultStorage() {
  try {
    if (typeof localStorage !== "undefined" && localStorage) {
      return localStorage;
    }
  } catch {
    // Access denied (e.g. a sandboxed frame): fall back to memory.
  }
  return new MemoryStorage();
}

/**
 * A Khala client for a set of topics.
 *
 * Events (subscribe with `on(name, fn)`; `on` returns an unsubscribe function):
 * - `doc`    ({topic, doc_key, doc_version, payload, watermark}) a document was added or changed
 * - `reset`  ({topic, docs, watermark}) a topic's documents were replaced by a hydration
 * - `state`  ({state, detail}) the connection state changed
 * - `batch`  ({topic, watermark, replay_complete}) a batch was applied and persisted
 * - `signal` ({code, ...payload}) a server signal the client handled (stale_cursor,
 *            slow_consumer, unauthorized, ...)
 * - `error`  (KhalaError) something the app should know about (forbidden topic, ...)
 */
export class KhalaClient {
  /**
   * @param {object} options see khala.d.ts (KhalaOptions)
   */
  constructor(options) {
    if (!options || !options.url) throw new TypeError("KhalaClient needs options.url");
    if (typeof options.getToken !== "function") throw new TypeError("KhalaClient needs options.getToken");
    if (!Array.isArray(options.topics) || options.topics.length === 0) {
      throw new TypeError("KhalaClient needs options.topics (a non-empty array)");
    }
    this.url = options.url.replace(/\/+$/, "");
    this.getToken = options.getToken;
    this.topics = [...new Set(options.topics)];
    this.storage = options.storage || defaultStorage();
    this.storagePrefix = options.storagePrefix || "khala";
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.random = options.random || Math.random;
    this.backoff = { min: 250, max: 10000, ...(options.backoff || {}) };
    this.heartbeatMs = options.heartbeatMs ?? 30000;
    this.syncHeartbeatMs = options.syncHeartbeatMs ?? 15000;
    this.replayBatchSize = options.replayBatchSize ?? 200;
    // Documents per hydration page (the server's default when unset; it accepts 1..1000).
    this.hydratePageSize = options.hydratePageSize;
    this.timeoutMs = options.timeoutMs ?? 10000;
    this.clientName = options.clientName || "khala-js";
    this.listeners = new Map();
    /** topic -> {watermark, docs: Map<doc_key, doc>} */
    this.topicState = new Map();
    this.state = States.IDLE;
    this.stateDetail = null;
    this.token = null;
    this.scope = null;
    this.socket = null;
    this.generation = 0;
    this.attempt = 0;
    this.ref = 0;
    this.joinRef = null;
    this.pending = new Map();
    this.timers = new Set();
    this.subscribed = new Set();
    this.stopped = true;
  }

  // ---- public API -----------------------------------------------------------------------------

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event).delete(fn);
  }

  /** Starts (or restarts) syncing. Resolves once the first connection attempt began. */
  async start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    await this.connect();
  }

  /** Stops syncing and closes the socket. Documents and watermarks stay persisted. */
  stop() {
    this.stopped = true;
    this.generation += 1;
    this.clearTimers();
    this.closeSocket(1000);
    this.setState(States.STOPPED);
  }

  /** The documents of `topic` held now: a Map doc_key -> {doc_key, doc_version, payload, watermark}. */
  docs(topic) {
    return new Map(this.ensureTopic(topic).docs);
  }

  /** The persisted watermark of `topic` (null before the first hydration). */
  watermark(topic) {
    return this.ensureTopic(topic).watermark;
  }

  /** Forgets the persisted state of every topic (the next start hydrates from scratch). */
  clearStorage() {
    for (const topic of this.topics) {
      this.storage.removeItem(this.storageKey(topic));
      this.topicState.delete(topic);
    }
  }

  /** Forces a reconnect now (e.g. after the app obtained a new token). */
  reconnect() {
    if (this.stopped) return;
    this.generation += 1;
    this.clearTimers();
    this.closeSocket(1000);
    this.attempt = 0;
    this.connect();
  }

  // ---- events and state -----------------------------------------------------------------------

  emit(event, value) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(value);
      } catch (error) {
        if (event !== "error") this.emit("error", error);
      }
    }
  }

  setState(state, detail = null) {
    if (this.state === state && this.stateDetail === detail) return;
    this.state = state;
    this.stateDetail = detail;
    this.emit("state", { state, detail });
  }

  // ---- persistence ----------------------------------------------------------------------------

  storageKey(topic) {
    return `${this.storagePrefix}:${this.scope}:${topic}`;
  }

  ensureTopic(topic) {
    let state = this.topicState.get(topic);
    if (!state) {
      state = { watermark: null, docs: new Map() };
      if (this.scope !== null) {
        try {
          const raw = this.storage.getItem(this.storageKey(topic));
          if (raw) {
            const saved = JSON.parse(raw);
            if (Number.isInteger(saved.watermark) && Array.isArray(saved.docs)) {
              state.watermark = saved.watermark;
              for (const doc of saved.docs) state.docs.set(doc.doc_key, doc);
            }
          }
        } catch {
          // Unreadable saved state: start from a hydration.
        }
      }
      this.topicState.set(topic, state);
    }
    return state;
  }

  persist(topic) {
    const state = this.ensureTopic(topic);
    if (state.watermark === null) return;
    try {
      this.storage.setItem(
        this.storageKey(topic),
        JSON.stringify({ watermark: state.watermark, docs: [...state.docs.values()] }),
      );
    } catch (error) {
      this.emit("error", new KhalaError("storage_failed", String(error && error.message ? error.message : error)));
    }
  }

  /** Binds the storage to the token's principal, so two principals never share saved state. */
  useToken(token) {
    this.token = token;
    const claims = tokenClaims(token) || {};
    const scope = [claims.sub || "?", claims.oa_org_id || "-", claims.oa_role || "-"].join("|");
    if (scope !== this.scope) {
      this.scope = scope;
      this.topicState.clear();
    }
  }

  // ---- HTTP hydration -------------------------------------------------------------------------

  /**
   * One hydration page of `topic` (or the one `docKey`). `page` = `{after, watermark}` reads the
   * page after `after` of the hydration whose first page reported `watermark`.
   */
  async hydrate(topic, docKey, page) {
    const params = new URLSearchParams();
    if (docKey !== undefined) params.set("doc_key", docKey);
    if (docKey === undefined && this.hydratePageSize) params.set("limit", String(this.hydratePageSize));
    if (page) {
      params.set("after", page.after);
      params.set("watermark", String(page.watermark));
    }
    const encoded = params.toString();
    const query = encoded ? `?${encoded}` : "";
    const response = await this.fetch(`${this.url}/sync/v1/topics/${encodeURIComponent(topic)}/docs${query}`, {
      headers: { authorization: `Bearer ${this.token}` },
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new KhalaError(error.code || `http_${response.status}`, error.message || `hydration returned ${response.status}`, {
        status: response.status,
        ...error,
      });
    }
    return body;
  }

  /** Replaces `topic`'s documents with a fresh hydration and resets its watermark. */
  async rehydrate(topic) {
    // Every page: each next page continues after the previous page's last key and reports the
    // first page's watermark, the one to subscribe from.
    const body = await this.hydrate(topic);
    const docs = [...body.docs];
    for (let after = body.next_after; after; ) {
      const page = await this.hydrate(topic, undefined, { after, watermark: body.watermark });
      docs.push(...page.docs);
      after = page.next_after;
    }
    const state = this.ensureTopic(topic);
    state.docs = new Map(docs.map((d) => [d.doc_key, d]));
    state.watermark = body.watermark;
    this.persist(topic);
    this.emit("reset", { topic, docs: new Map(state.docs), watermark: state.watermark });
  }

  // ---- applying updates -----------------------------------------------------------------------

  /** Applies one update when it is newer than what is held (idempotent). */
  applyUpdate(update) {
    const state = this.ensureTopic(update.topic);
    const held = state.docs.get(update.doc_key);
    let changed = false;
    if (!held || update.doc_version > held.doc_version) {
      const doc = {
        doc_key: update.doc_key,
        doc_version: update.doc_version,
        payload: update.payload,
        payload_hash: update.payload_hash,
        watermark: update.watermark,
      };
      state.docs.set(update.doc_key, doc);
      changed = true;
      this.emit("doc", { topic: update.topic, ...doc });
    }
    if (state.watermark === null || update.watermark > state.watermark) state.watermark = update.watermark;
    return changed;
  }

  async onBatch(generation, payload) {
    const touched = new Set();
    for (const update of payload.updates || []) {
      if (generation !== this.generation) return;
      if (!this.subscribed.has(update.topic)) continue;
      if (update.hydration_required && update.payload === null) {
        // A pointer to an oversized document: fetch it over HTTP.
        try {
          const body = await this.hydrate(update.topic, update.doc_key);
          const doc = body.docs.find((d) => d.doc_key === update.doc_key);
          if (doc) update = { ...update, payload: doc.payload, doc_version: Math.max(update.doc_version, doc.doc_version) };
        } catch (error) {
          this.emit("error", error);
          this.scheduleReconnect(generation, null);
          return;
        }
      }
      this.applyUpdate(update);
      touched.add(update.topic);
    }
    for (const topic of touched) this.persist(topic);
    if (generation !== this.generation) return;
    this.setState(payload.replay_complete ? States.LIVE : States.CATCHING_UP);
    for (const topic of touched) {
      this.emit("batch", { topic, watermark: this.watermark(topic), replay_complete: !!payload.replay_complete });
    }
  }

  onWatermarks(watermarks) {
    for (const { topic, watermark } of watermarks || []) {
      if (!this.subscribed.has(topic)) continue;
      const state = this.ensureTopic(topic);
      if (state.watermark === null || watermark > state.watermark) {
        state.watermark = watermark;
        this.persist(topic);
      }
    }
  }

  // ---- the socket -----------------------------------------------------------------------------

  timer(fn, ms, repeat = false) {
    const id = repeat ? setInterval(fn, ms) : setTimeout(() => {
      this.timers.delete(id);
      fn();
    }, ms);
    this.timers.add(id);
    return id;
  }

  clearTimers() {
    for (const id of this.timers) {
      clearTimeout(id);
      clearInterval(id);
    }
    this.timers.clear();
    for (const { reject } of this.pending.values()) reject(new KhalaError("closed", "socket closed"));
    this.pending.clear();
  }

  closeSocket(code) {
    const socket = this.socket;
    this.socket = null;
    this.subscribed.clear();
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      // Closing a socket that is still connecting makes it emit an error; with no handler left,
      // Node's `ws` treats that as unhandled. The socket is abandoned, so the error is swallowed.
      socket.onerror = () => {};
      try {
        socket.close(code);
      } catch {
        // Already closed.
      }
    }
  }

  socketUrl() {
    const base = this.url.replace(/^http/, "ws");
    const params = new URLSearchParams({
      token: this.token,
      vsn: VSN,
      client: this.clientName,
      protocol_version: "khala.ws.v1",
      schema_version: "1",
    });
    return `${base}/sync/socket/websocket?${params}`;
  }

  async obtainToken(reason) {
    const token = await this.getToken({ reason });
    if (!token) throw new KhalaError("unauthorized", "the app has no token");
    this.useToken(token);
  }

  /** One connection attempt: token, hydrations of topics without a watermark, socket. */
  async connect(reason = null) {
    const generation = ++this.generation;
    this.setState(this.attempt === 0 ? States.CONNECTING : States.RECONNECTING);
    try {
      await this.obtainToken(reason);
      for (const topic of this.topics) {
        if (generation !== this.generation) return;
        if (this.ensureTopic(topic).watermark === null) {
          this.setState(States.RESYNCING);
          await this.rehydrate(topic);
        }
      }
    } catch (error) {
      if (generation !== this.generation) return;
      this.onFailure(generation, error);
      return;
    }
    if (generation !== this.generation || this.stopped) return;
    this.openSocket(generation);
  }

  onFailure(generation, error) {
    const code = error && error.code;
    if (code === "unauthorized" || code === "reauth_required") {
      this.emit("signal", { code, message: error.message });
      this.scheduleReconnect(generation, code);
    } else if (code === "forbidden_topic" || code === "bad_topic") {
      this.emit("error", error);
      this.stop();
    } else {
      this.emit("error", error instanceof KhalaError ? error : new KhalaError("network", String(error && error.message ? error.message : error)));
      this.scheduleReconnect(generation, null);
    }
  }

  /** Reconnects after a backoff (or `delayMs`); `reason` is passed to getToken. */
  scheduleReconnect(generation, reason, delayMs = null) {
    if (generation !== this.generation || this.stopped) return;
    this.generation += 1;
    const next = this.generation;
    this.clearTimers();
    this.closeSocket(1000);
    if (reason === "unauthorized" || reason === "reauth_required") {
      this.setState(States.UNAUTHORIZED, reason);
    } else {
      this.setState(States.RECONNECTING, reason);
    }
    const delay = delayMs ?? backoffDelay(this.attempt, { ...this.backoff, random: this.random });
    this.attempt += 1;
    this.timer(() => {
      if (next === this.generation && !this.stopped) this.connect(reason);
    }, delay);
  }

  openSocket(generation) {
    let socket;
    try {
      socket = new this.WebSocket(this.socketUrl());
    } catch (error) {
      this.onFailure(generation, error);
      return;
    }
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.onOpen(generation);
    };
    socket.onmessage = (event) => this.onFrame(generation, event.data);
    socket.onerror = () => {};
    socket.onclose = (event) => {
      if (generation !== this.generation) return;
      if (!opened) {
        // The upgrade was refused or the server is down: a browser cannot read the 403, so
        // ask the HTTP side whether the token is the problem.
        this.probeToken(generation);
        return;
      }
      const code = event && event.code;
      const reason = code === 1008 ? "unauthorized" : null;
      this.scheduleReconnect(generation, reason);
    };
  }

  async probeToken(generation) {
    try {
      await this.hydrate(this.topics[0], "khala-js/probe");
      this.scheduleReconnect(generation, null);
    } catch (error) {
      const code = error && error.code;
      if (code === "unauthorized" || code === "reauth_required") {
        this.emit("signal", { code, message: error.message });
        this.scheduleReconnect(generation, code);
      } else {
        this.scheduleReconnect(generation, null);
      }
    }
  }

  send(frame) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(frame));
  }

  push(event, payload, joinRef = this.joinRef, topic = CHANNEL) {
    const ref = String(++this.ref);
    return new Promise((resolve, reject) => {
      const timeout = setTimeout(() => {
        this.pending.delete(ref);
        reject(new KhalaError("timeout", `${event} timed out`));
      }, this.timeoutMs);
      this.pending.set(ref, {
        resolve: (v) => {
          clearTimeout(timeout);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timeout);
          reject(e);
        },
      });
      this.send([joinRef, ref, topic, event, payload]);
    });
  }

  async onOpen(generation) {
    this.timer(() => this.push("heartbeat", {}, null, "phoenix").catch(() => {}), this.heartbeatMs, true);
    try {
      this.joinRef = String(this.ref + 1);
      const join = await this.push("phx_join", {}, String(this.ref + 1));
      if (generation !== this.generation) return;
      if (join.status !== "ok") throw new KhalaError(join.response.code, join.response.message, join.response);
      await this.subscribe(generation, this.topics);
    } catch (error) {
      if (generation !== this.generation) return;
      this.onFailure(generation, error);
      return;
    }
    this.timer(
      () =>
        this.push("sync:heartbeat", {})
          .then((reply) => reply.status === "ok" && this.onWatermarks(reply.response.watermarks))
          .catch(() => {}),
      this.syncHeartbeatMs,
      true,
    );
  }

  /** Subscribes `topics` from their watermarks; re-hydrates and retries stale ones. */
  async subscribe(generation, topics) {
    for (let round = 0; round < 3; round += 1) {
      const resume = {};
      for (const topic of topics) resume[topic] = this.ensureTopic(topic).watermark;
      this.setState(States.CATCHING_UP);
      const reply = await this.push("sync:subscribe", {
        topics,
        resume_after: resume,
        replay_batch_size: this.replayBatchSize,
      });
      if (generation !== this.generation) return;
      if (reply.status === "ok") {
        for (const topic of topics) this.subscribed.add(topic);
        this.attempt = 0;
        return;
      }
      const error = reply.response || {};
      if (error.code === "stale_cursor") {
        this.emit("signal", error);
        await this.resync(generation, error.stale_topics.map((s) => s.topic));
        continue;
      }
      if (error.code === "rate_limited") {
        await new Promise((r) => setTimeout(r, error.retry_after_ms || 1000));
        continue;
      }
      throw new KhalaError(error.code || "subscribe_failed", error.message, error);
    }
    throw new KhalaError("stale_cursor", "still stale after re-hydrating");
  }

  async resync(generation, topics) {
    this.setState(States.RESYNCING);
    for (const topic of topics) {
      this.subscribed.delete(topic);
      if (generation !== this.generation) return;
      await this.rehydrate(topic);
    }
  }

  onFrame(generation, data) {
    if (generation !== this.generation) return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!Array.isArray(frame) || frame.length !== 5) return;
    const [, ref, topic, event, payload] = frame;
    if (event === "phx_reply" && ref !== null && this.pending.has(String(ref))) {
      const { resolve } = this.pending.get(String(ref));
      this.pending.delete(String(ref));
      resolve(payload);
      return;
    }
    if (topic !== CHANNEL) return;
    switch (event) {
      case "sync:update_batch":
        this.onBatch(generation, payload);
        break;
      case "sync:heartbeat":
        this.onWatermarks(payload.watermarks);
        break;
      case "sync:error":
        this.onSyncError(generation, payload);
        break;
      case "phx_close":
        this.scheduleReconnect(generation, null, 0);
        break;
      default:
        break;
    }
  }

  async onSyncError(generation, error) {
    this.emit("signal", error);
    switch (error.code) {
      case "stale_cursor": {
        const topics = (error.stale_topics || []).map((s) => s.topic);
        try {
          await this.resync(generation, topics);
          if (generation !== this.generation) return;
          await this.subscribe(generation, topics);
        } catch (failure) {
          this.onFailure(generation, failure);
        }
        break;
      }
      case "slow_consumer":
        if (error.action === "disconnect") {
          if (error.full_resync_required) {
            for (const topic of this.topics) this.ensureTopic(topic).watermark = null;
          }
          this.scheduleReconnect(generation, "slow_consumer", error.reconnect_after_ms ?? 2000);
        }
        break;
      case "unauthorized":
      case "reauth_required":
        this.scheduleReconnect(generation, error.code, 0);
        break;
      case "internal":
        this.scheduleReconnect(generation, null);
        break;
      default:
        this.emit("error", new KhalaError(error.code || "sync_error", error.message, error));
    }
  }
}

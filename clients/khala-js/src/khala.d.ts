// Types of the Khala sync client (khala.js).

export type KhalaState =
  | "idle"
  | "connecting"
  | "catching_up"
  | "live"
  | "resyncing"
  | "reconnecting"
  | "unauthorized"
  | "stopped";

export declare const States: Readonly<{
  IDLE: "idle";
  CONNECTING: "connecting";
  CATCHING_UP: "catching_up";
  LIVE: "live";
  RESYNCING: "resyncing";
  RECONNECTING: "reconnecting";
  UNAUTHORIZED: "unauthorized";
  STOPPED: "stopped";
}>;

/** The subset of the Web Storage interface the client uses (localStorage fits). */
export interface KhalaStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export declare class MemoryStorage implements KhalaStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Why the client asks for a token: null at the first connect and on ordinary reconnects. */
export type TokenReason = null | "unauthorized" | "reauth_required" | "slow_consumer";

export interface KhalaOptions {
  /** The runtime's base URL, e.g. "https://runtime.example.com" (http → ws for the socket). */
  url: string;
  /** Returns a sync token; called before every connection attempt. On "unauthorized" return a
   *  fresh token, on "reauth_required" log the user in again. */
  getToken(context: { reason: TokenReason }): string | Promise<string>;
  /** Topics to hydrate and follow, e.g. ["runtime.run_summaries"]. */
  topics: string[];
  /** Where documents and watermarks persist (default: localStorage, else memory). */
  storage?: KhalaStorage;
  /** Key prefix in storage (default "khala"); keys are scoped by the token's principal too. */
  storagePrefix?: string;
  /** A WebSocket constructor (default: globalThis.WebSocket; pass `ws` on Node 20). */
  WebSocket?: unknown;
  /** fetch (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** Reconnect backoff bounds in ms (full jitter). Default {min: 250, max: 10000}. */
  backoff?: { min?: number; max?: number };
  /** Phoenix heartbeat interval (default 30000 ms). */
  heartbeatMs?: number;
  /** sync:heartbeat interval (default 15000 ms; the server closes idle channels after 60 s). */
  syncHeartbeatMs?: number;
  /** replay_batch_size of subscribes (default 200). */
  replayBatchSize?: number;
  /** Reply timeout of joins and subscribes (default 10000 ms). */
  timeoutMs?: number;
  /** The `client` connect parameter (default "khala-js"). */
  clientName?: string;
  /** Random source in [0, 1) for jitter (tests). */
  random?: () => number;
}

export interface KhalaDoc<P = Record<string, unknown>> {
  doc_key: string;
  doc_version: number;
  payload: P;
  payload_hash: string;
  watermark: number;
}

export interface KhalaEvents {
  doc: KhalaDoc & { topic: string };
  reset: { topic: string; docs: Map<string, KhalaDoc>; watermark: number };
  state: { state: KhalaState; detail: string | null };
  batch: { topic: string; watermark: number; replay_complete: boolean };
  signal: { code: string; [key: string]: unknown };
  error: KhalaError;
}

export declare class KhalaError extends Error {
  constructor(code: string, message?: string, details?: Record<string, unknown>);
  code: string;
  details: Record<string, unknown>;
}

export declare class KhalaClient {
  constructor(options: KhalaOptions);
  readonly state: KhalaState;
  on<E extends keyof KhalaEvents>(event: E, listener: (value: KhalaEvents[E]) => void): () => void;
  start(): Promise<void>;
  stop(): void;
  reconnect(): void;
  docs(topic: string): Map<string, KhalaDoc>;
  watermark(topic: string): number | null;
  clearStorage(): void;
}

export declare function tokenClaims(token: string): Record<string, unknown> | null;
export declare function backoffDelay(
  attempt: number,
  options?: { min?: number; max?: number; random?: () => number },
): number;

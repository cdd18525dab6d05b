//! Khala, the sync gateway: a subscriber of the projectors' sync stream that serves the Phoenix
//! Channels v2 `sync:v1` protocol over WebSockets (replay from a client's watermark, then live
//! deltas), HTTP hydration, and sync tokens. It never writes authority state; the only table it
//! writes is its own revocation list.
//!
//! # Layout
//! - [`protocol`]: the wire format (Phoenix v2 frames, `sync:v1` payloads, error codes, the
//!   `sync:frame` envelope). Pure data, shared with the client.
//! - [`source`]: the [`SyncSource`](source::SyncSource) trait the gateway reads through
//!   (the semantics of `projectors::store`), [`StoreSource`](source::StoreSource) over the
//!   projectors' store (what `serve` runs), and an in-memory implementation with the same epoch
//!   and retention rules (tests).
//! - [`auth`]: sync-token verification, minting and the durable revocation list.
//! - [`hub`]: fan-out (per-topic tailers, prepared rows, per-principal feeds).
//! - [`connection`]: one socket's writer and inbound errors.
//! - [`session`]: the per-socket state machine (generic over Sink/Stream).
//! - [`gateway`]: shared state (config, tailers, limits, tracker, shutdown).
//! - [`server`]: the upgrade handler, routers and a standalone `serve`.
//! - [`http`]: hydration, token minting and revocation handlers.
//! - [`config`]: configuration and its `clap` flags.
//! - [`client`]: a Phoenix/Khala client (the watch command, tests, the `openagents-bench` crate).
//! - [`cli`]: `watch` and `token mint` commands (`Args` + `run`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod session;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod test_utils;

pub use config::{GatewayArgs, GatewayConfig, TopicPolicy};
pub use gateway::Gateway;

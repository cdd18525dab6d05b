//! The OpenAgents Runtime: an event-sourced execution authority for AI-agent runs and workers.
//! This crate is the composition root: it reads configuration, opens the journal, builds the
//! command [`engine::Engine`], and serves the HTTP command API plus every background task
//! (projectors, the Khala gateway and the Lightning executors plug in through [`server::Server`]). Nothing depends on it.
//!
//! # Layout
//! - [`config`]: [`config::RuntimeConfig`], everything `serve` needs, and the signing secret.
//! - [`app`]: [`app::App`], the shared runtime handle (database, engine, notifier, auth, config,
//!   shutdown token and task tracker).
//! - [`server`]: [`server::Server`], which composes routers, listeners and long-running tasks
//!   and runs them until shutdown (SIGINT/SIGTERM), draining in-flight work.
//! - [`api`]: the HTTP API (axum): `/internal/v1` (runs, workers, health, OpenAPI) behind
//!   internal signature auth, plus `/healthz`, `/readyz`, `/metrics`.
//! - [`sweeper`]: the worker lease sweeper (marks workers whose lease ran out as lost).
//! - [`sync`]: the sync lane: projector runners, the stream-head relay and Khala.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`cli`]: the `openagents-runtime` command line (one file per subcommand).
//! - [`replay`]: deterministic replay of fixtures, REPLAY.jsonl files and compat histories; the
//!   `--journal` drift check.
//! - [`console`]: the live read-only console at `/console` (embedded assets, login codes, the
//!   `/ops/v1/status` snapshot).
//! - [`audit`]: audit bundles (export, verify), the run artifact HTTP routes.
//!
//! Benchmarks live in their own crate, `bench/` (`openagents-bench`), which depends on this one.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod operator_log;
pub mod replay;
pub mod server;
pub mod sweeper;
pub mod sync;
pub mod telemetry;

pub use app::App;
pub use config::RuntimeConfig;
pub use server::Server;

/// The version reported by health endpoints and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The service name reported by health endpoints.
pub const SERVICE: &str = "openagents-runtime";

//! The Bolt11 payment executor: the original wallet executor's HTTP API, backed by the journal.
//!
//! - [`config`]: wallet id, policy, fee limit, timeouts, bearer token.
//! - [`service`]: [`PaymentExecutor`], the exactly-once payment flow and the reconciler, one file
//!   per seam: admission, the per-hash driver, settlement, the start-up reconcile, `/status`.
//! - [`http`]: the `axum::Router` with `/healthz`, `/status`, `/pay-bolt11`.
//! - [`lease`]: [`lease::WalletLease`], one executor per wallet.

pub mod config;
pub mod http;
pub mod lease;
pub mod service;

pub use config::{ExecutorConfig, FeeLimit};
pub use http::router;
pub use service::{PayError, PayInput, PaySuccess, PaymentExecutor, WalletStatus};

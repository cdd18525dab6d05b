//! The Lightning payment lane: a Bolt11 payment executor that pays through LND under spend caps,
//! exactly once (payments are aggregates in the runtime journal), and the L402 paywall tooling:
//! compile, reconcile and a reverse-proxy gateway.
//!
//! # Layout
//! - [`lnd`]: [`lnd::LndNode`], the domain's `LightningNode` over LND's gRPC API (`lnd_grpc_rust`).
//! - [`cli`]: `lightning l402 compile|reconcile` and the `serve` flags (`--wallet-executor`,
//!   `--l402-gateway`) with [`cli::start`].
//! - [`executor`]: the wallet executor (HTTP API, payment flow, crash reconcile).
//! - [`l402`]: L402 compile, reconcile and the gateway.
//! - [`run_payments`]: a run's settled payments, for run receipts.
//! - `testing` (feature `testing`): an in-process fake LND speaking real gRPC over TLS.
#![forbid(unsafe_code)]

pub mod cli;
pub mod executor;
pub mod l402;
pub mod lnd;
pub mod run_payments;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Server stubs compiled from LND's protos for the fake LND (messages are `lnd_grpc_rust`'s).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[cfg(any(test, feature = "testing"))]
pub(crate) mod fake_stubs {
    pub mod lnrpc {
        tonic::include_proto!("lnrpc");
    }
    pub mod routerrpc {
        tonic::include_proto!("routerrpc");
    }
}

//! L402 paywalls: compile intents into a route config, reconcile a gateway to it, and the gateway.
//!
//! - [`compile`]: deterministic compile with diagnostics, YAML and `configHash`.
//! - [`control_plane`]: intents in, deployments and events out (HTTP API or files).
//! - [`reconcile`]: the deploy/verify/rollback state machine.
//! - [`gateway`]: the L402 reverse proxy (`serve --l402-gateway`).
//! - [`macaroon`]: V2 macaroons with Aperture's identifier.

pub mod compile;
pub mod control_plane;
pub mod gateway;
pub mod macaroon;
pub mod reconcile;

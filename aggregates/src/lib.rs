//! The runtime's pure domain: what runs and workers are, which commands they accept, which events
//! they emit and which transitions are illegal. No I/O, no wall clock, no randomness: ids and
//! timestamps arrive with each command, so folding the same events always gives the same state.
//!
//! # Layout
//! - [`ids`]: validated identifier newtypes (`RunId`, `WorkerId`, …) and [`ids::Owner`].
//! - [`time`]: [`Timestamp`], the only notion of time here.
//! - [`aggregate`]: [`Stamped`] commands and [`RuntimeAggregate`], what the engine needs beyond
//!   cqrs-es's `Aggregate`.
//! - [`run`]: the Run aggregate (created → running → succeeded | failed | canceled).
//! - [`worker`]: the Worker aggregate (starting → running → stopping → stopped | failed | lost).
//! - [`canonical`]: canonical JSON and `sha256:` content hashes.
//! - [`number`]: whole numbers in JSON bodies (`1841.0` is the integer 1841).
//! - [`chain`]: the per-aggregate event hash chain (`openagents.event_chain.v1`).
//! - [`receipt`]: the RunReceipt aggregate (a run's recorded `openagents.receipt.v1`).
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod canonical;
pub mod chain;
pub mod ids;
pub mod number;
pub mod operator;
pub mod payment;
pub mod receipt;
pub mod run;
pub mod time;
pub mod worker;

pub use aggregate::{RuntimeAggregate, Stamped};
pub use time::Timestamp;

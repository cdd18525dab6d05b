//! Projectors: the read models clients see and the per-topic sync stream Khala delivers, built
//! from the journal's gap-safe global read, exactly once, in commit order.
//!
//! # Layout
//! - [`model`]: the [`Projection`] trait (pure: document + event → document),
//!   owners, `runtime_source`, and an in-memory [`fold`](model::fold).
//! - Read models, one per file: [`run_summary`] (`runtime.run_summaries`), [`worker_summary`]
//!   (`runtime.codex_worker_summaries`), [`worker_events`] (`runtime.codex_worker_events`),
//!   [`payments`] (`runtime.payments`), [`run_events`] (`runtime.run_events`, a run's transcript),
//!   [`run_metadata`] (`runtime.run_metadata`, metadata too large to repeat in a summary).
//! - [`store`]: [`SyncStore`], checkpoints and leases, watermarks, stream rows
//!   and documents in PostgreSQL or SQLite; one transaction per batch.
//! - [`runner`]: the lease-holding projector loop, full rebuilds (new epochs), entity repairs,
//!   retention, lag metrics.
//! - [`notify`]: stream-head wake-ups, in-process and across processes.
//!
//! Dependency direction: `aggregates` ← `engine` ← `projectors` ← `sync-gateway` ← the binary.
#![forbid(unsafe_code)]

pub mod model;
pub mod notify;
pub mod payments;
pub mod run_events;
pub mod run_metadata;
pub mod run_summary;
pub mod runner;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker_events;
pub mod worker_summary;

pub use model::{DocOwner, OwnerFilter, Projection};
pub use notify::SyncNotifier;
pub use runner::{all_projectors, all_specs, DynProjector, ProjectorContext, RunnerConfig};
pub use store::SyncStore;

//! The runtime engine: the journal (the only source of truth) and the command path that writes it.
//!
//! # Layout
//! - [`auth`]: internal signature tokens (`X-OA-RUNTIME-SIGNATURE`): mint, verify, single-use
//!   nonces shared through the database.
//! - [`journal`]: the [`Journal`] trait and its PostgreSQL and SQLite backends,
//!   with a gap-safe global read for projectors.
//! - [`command`]: [`Engine`], which stamps, handles and appends commands with optimistic
//!   concurrency, bounded retries and idempotency keys.
//! - [`listing`]: runs of a thread and workers of an owner, from their birth events.
//! - `cache`: the in-memory aggregate cache behind the engine.
//! - [`audit_log`]: the RFC 9162 Merkle tree over the journal, its signed checkpoints and
//!   proofs, and the maintainer that extends it off the write path.
//! - [`artifacts`]: receipts, REPLAY.jsonl, trajectory hashes and receipt signatures, computed
//!   from a run's events; recording a finished run's receipt.
//! - [`notify`]: commit notifications, in-process and across processes (PostgreSQL NOTIFY).
//! - [`principal`]: who a request speaks for and what it may reach (claims bind, tenancy fails
//!   closed, the operator role).
//! - [`retention`]: expiry of idempotency records (events are never pruned).
//! - [`db`]: connecting, migrating and checking the database.
//! - [`clock`]: injectable clock and id source.
//! - [`backoff`]: retry delays of the background loops (exponential, capped, jittered).
//! - [`fs`]: durable file replacement (temporary file, fsync, rename, directory fsync).
//! - `testing` (feature `testing`): throwaway databases for tests.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod audit_log;
pub mod auth;
pub mod backoff;
mod cache;
pub mod clock;
pub mod command;
pub mod db;
pub mod fs;
pub mod journal;
pub mod listing;
pub mod notify;
pub mod principal;
pub mod retention;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use command::{
    CommandContext, CommandError, Engine, EngineConfig, IdempotencyRequest, Outcome, OutcomeKind,
};
pub use db::{Database, DatabaseConfig, DatabaseError, PG_MIGRATOR, SQLITE_MIGRATOR};
pub use journal::{AnyJournal, GlobalCursor, Journal, JournalError, StoredEvent};

//! The command engine: load an aggregate, let it decide, append what it decided.
//!
//! [`Engine::execute`] stamps the command with the clock, runs `handle` against the cached (or
//! freshly loaded) aggregate and appends the resulting events with optimistic concurrency. A
//! conflicting append (another process moved the aggregate) is retried a bounded number of times
//! after reloading; then it is reported as [`CommandError::Contended`]. An `Idempotency-Key` is
//! checked before handling and recorded in the same statement as the events.
//!
//! # Layout
//! - this file: the [`Engine`], its configuration, a command's context, outcome and errors;
//! - `execute.rs`: [`Engine::execute`], the write path (retries, idempotent replays, and the
//!   serialisation that links new events into the aggregate's hash chain);
//! - `read.rs`: [`Engine::load`] and the other read-through reads of one aggregate;
//! - `stored.rs`: decoding stored events ([`decode`]) and their chain content and hash.

mod execute;
mod read;
mod stored;

pub use stored::{decode, stored_chain_hash, stored_content};

use std::num::NonZeroUsize;
use std::sync::Arc;

use aggregates::{RuntimeAggregate, Timestamp};
use cqrs_es::EventEnvelope;

use crate::auth::NonceTicket;
use crate::cache::AggregateCache;
use crate::clock::Stamps;
use crate::journal::{AnyJournal, JournalError};
use crate::notify::JournalNotifier;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How many times a conflicting append is retried (after reloading) before giving up.
    pub max_conflict_retries: u32,
    /// How many aggregates stay cached in memory.
    pub cache_capacity: NonZeroUsize,
    /// How many bytes the cached aggregates may weigh together
    /// (`RuntimeAggregate::approx_bytes`); least recently used ones are evicted beyond it.
    pub cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_conflict_retries: 5,
            cache_capacity: NonZeroUsize::new(10_000).expect("non-zero"),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Who issued a command and how it can be traced; copied into every event's metadata.
#[derive(Clone, Debug, Default)]
pub struct CommandContext {
    /// `user:<id>`, `guest:<scope>` or `system:<component>`.
    pub actor: String,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub idempotency: Option<IdempotencyRequest>,
    /// The request token's nonce, recorded in the command's own append (the first append made
    /// with this context records it; see `auth::NonceTicket`).
    pub nonce: Option<Arc<NonceTicket>>,
}

impl CommandContext {
    /// A context for commands the runtime issues itself (e.g. the lease sweeper).
    pub fn system(component: &str) -> Self {
        Self {
            actor: format!("system:{component}"),
            ..Self::default()
        }
    }
}

/// A client's `Idempotency-Key` for this command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRequest {
    /// Keys are unique per scope (the principal).
    pub scope: String,
    pub key: String,
    /// Hash of what the request asked for; the same key with another hash is a conflict.
    pub request_hash: String,
}

/// What a command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Events were appended.
    Appended,
    /// The command was valid and changed nothing (e.g. a re-sent frame).
    Unchanged,
    /// A retried `Idempotency-Key`: the first request's outcome, re-read from the journal.
    Replayed,
}

/// The result of a successful command.
#[derive(Debug)]
pub struct Outcome<A: RuntimeAggregate> {
    pub kind: OutcomeKind,
    /// The aggregate the command acted on (for a replay, the one the original request used).
    pub aggregate_id: String,
    /// The events the command appended (or, for a replay, had appended).
    pub events: Vec<EventEnvelope<A>>,
    /// The aggregate after the command (for a replay, right after the original command).
    pub summary: A::Summary,
    /// The aggregate's journal version after the command.
    pub version: u64,
    /// For an `Unchanged` natural-key duplicate (a frame or request re-sent with the same id):
    /// the journal sequence of the event that recorded the original, so the answer can say
    /// where it landed. `None` otherwise (the events carry it).
    pub recorded_sequence: Option<u64>,
}

impl<A: RuntimeAggregate> Outcome<A> {
    /// True unless this request appended new events.
    pub fn is_replay(&self) -> bool {
        self.kind != OutcomeKind::Appended
    }
}

/// Why a command failed. Callers branch on these.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command (a business rule).
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept winning the race for this aggregate.
    #[error("the aggregate kept changing underneath the command ({attempts} attempts)")]
    Contended { attempts: u32 },
    /// The idempotency key was first used for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// The request's token nonce was recorded by another request first: nothing was written.
    #[error("the request's token nonce was already used")]
    NonceReplayed,
    /// The journal could not be reached; the command may or may not have been applied.
    #[error("journal unavailable")]
    Unavailable(#[source] JournalError),
    /// Anything else (corrupt data, a bug). Logged where handled; clients see an opaque error.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl<E: std::error::Error> CommandError<E> {
    fn from_journal(error: JournalError) -> Self {
        if error.is_unavailable() {
            CommandError::Unavailable(error)
        } else {
            CommandError::Internal(anyhow::Error::new(error))
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CommandError::Rejected(_) => "rejected",
            CommandError::Contended { .. } => "contended",
            CommandError::IdempotencyKeyReused => "idempotency_conflict",
            CommandError::NonceReplayed => "nonce_replayed",
            CommandError::Unavailable(_) => "unavailable",
            CommandError::Internal(_) => "error",
        }
    }
}

/// The command engine. One per process; cheap to share behind an `Arc`.
pub struct Engine {
    journal: AnyJournal,
    stamps: Stamps,
    cache: AggregateCache,
    notifier: Arc<JournalNotifier>,
    config: EngineConfig,
}

impl Engine {
    pub fn new(
        journal: AnyJournal,
        stamps: Stamps,
        notifier: Arc<JournalNotifier>,
        config: EngineConfig,
    ) -> Self {
        Self {
            journal,
            stamps,
            cache: AggregateCache::new(config.cache_capacity, config.cache_bytes),
            notifier,
            config,
        }
    }

    pub fn journal(&self) -> &AnyJournal {
        &self.journal
    }

    pub fn notifier(&self) -> &Arc<JournalNotifier> {
        &self.notifier
    }

    /// The engine's clock.
    pub fn now(&self) -> Timestamp {
        self.stamps.clock.now()
    }

    /// A fresh id from the engine's id source.
    pub fn next_id(&self, prefix: &str) -> String {
        self.stamps.ids.next_id(prefix)
    }

    /// What the cached aggregates weigh together (bounded by `EngineConfig::cache_bytes`).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

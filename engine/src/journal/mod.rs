//! The journal: the runtime's single source of truth, an append-only log of events.
//!
//! One trait, [`Journal`], with two backends that pass the same conformance suite
//! (`tests/it/journal.rs`): [`PgJournal`] (postgres-es tables in PostgreSQL) and
//! [`SqliteJournal`] (the embedded default). [`AnyJournal`] picks one at runtime.
//!
//! Two reads matter and have different guarantees:
//! - [`Journal::load`]: one aggregate's events in `sequence` order (for command handling);
//! - [`Journal::read_all`]: every committed event exactly once, in a global order that never lets a
//!   late-committing transaction slip behind a reader (for projectors). See `docs/adr/0002-global-order.md`.

/// PostgreSQL's read horizon as SQL: the oldest transaction id still running. Every event whose
/// `transaction_id` is below it is committed or never will be, so a reader that stops there reads
/// in commit order without skipping a late commit (`docs/adr/0002-global-order.md`). A macro so
/// it splices into `concat!`-built statements; every reader in the workspace uses it.
#[macro_export]
macro_rules! pg_read_horizon {
    () => {
        "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
    };
}

mod any;
mod postgres;
mod sqlite;
mod sqlite_writer;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use aggregates::Timestamp;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

pub use any::AnyJournal;
pub use postgres::PgJournal;
pub use sqlite::SqliteJournal;
pub use sqlite_writer::{SqliteWriter, MAX_BATCH as MAX_GROUP_COMMIT};

/// A point in the journal's global order: `(transaction, position)`, compared lexicographically.
///
/// `transaction` is the appending transaction's id (PostgreSQL `xid8`; always 0 in SQLite, where
/// writers are serialised and `position` alone is commit-ordered). A reader that has consumed every
/// event up to a cursor resumes with `read_all(cursor, ..)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GlobalCursor {
    transaction: u64,
    position: u64,
}

impl GlobalCursor {
    /// Before the first event.
    pub const START: GlobalCursor = GlobalCursor {
        transaction: 0,
        position: 0,
    };

    pub fn new(transaction: u64, position: u64) -> Self {
        Self {
            transaction,
            position,
        }
    }

    pub fn transaction(&self) -> u64 {
        self.transaction
    }

    pub fn position(&self) -> u64 {
        self.position
    }
}

impl fmt::Display for GlobalCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction, self.position)
    }
}

/// Event metadata: string keys to string values (cqrs-es's metadata shape), kept sorted so the
/// stored JSON is byte-for-byte reproducible.
pub type EventMetadata = BTreeMap<String, String>;

/// Metadata keys the engine writes.
pub mod metadata_keys {
    /// When the engine accepted the command (RFC 3339). Projections use it as their clock.
    pub const RECORDED_AT: &str = "recorded_at";
    /// `user:<id>`, `guest:<scope>` or `system:<component>`.
    pub const ACTOR: &str = "actor";
    /// The `x-request-id` of the HTTP request that carried the command.
    pub const REQUEST_ID: &str = "request_id";
    /// The W3C trace id from `traceparent`.
    pub const TRACE_ID: &str = "trace_id";
    /// The client's `Idempotency-Key`, if any.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
}

/// An event as stored, with its place in the global order.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub cursor: GlobalCursor,
    pub event: SerializedEvent,
}

impl StoredEvent {
    /// `recorded_at` from the metadata, if present and well-formed.
    pub fn recorded_at(&self) -> Option<Timestamp> {
        self.event
            .metadata
            .get(metadata_keys::RECORDED_AT)
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
    }
}

/// An event as stored, its payload and metadata left as the stored JSON text: for readers that
/// need only part of it (the audit tree reads the stored hashes from the metadata and scans the
/// payload for secret fields without parsing it). [`RawStoredEvent::parse`] gives the
/// [`StoredEvent`] `read_all` returns.
#[derive(Clone, Debug, PartialEq)]
pub struct RawStoredEvent {
    pub cursor: GlobalCursor,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
}

impl RawStoredEvent {
    /// The event of a journal row selected with its columns by name (`aggregate_type`,
    /// `aggregate_id`, `sequence`, `event_type`, `event_version`, `payload` and `metadata` as
    /// text), at `cursor`, which each backend reads from its own columns.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] when a column is missing or of another type.
    pub(crate) fn from_row<R>(row: &R, cursor: GlobalCursor) -> Result<Self, JournalError>
    where
        R: sqlx::Row,
        for<'c> &'c str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let decode = |e: sqlx::Error| JournalError::Corrupt(e.to_string());
        Ok(Self {
            cursor,
            aggregate_type: row.try_get("aggregate_type").map_err(decode)?,
            aggregate_id: row.try_get("aggregate_id").map_err(decode)?,
            sequence: to_u64(row.try_get("sequence").map_err(decode)?, "sequence")?,
            event_type: row.try_get("event_type").map_err(decode)?,
            event_version: row.try_get("event_version").map_err(decode)?,
            payload: row.try_get("payload").map_err(decode)?,
            metadata: row.try_get("metadata").map_err(decode)?,
        })
    }

    /// The event with its payload and metadata parsed.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] when either is not JSON.
    pub fn parse(self) -> Result<StoredEvent, JournalError> {
        let parse = |text: &str, what: &str| {
            serde_json::from_str(text).map_err(|e| JournalError::Corrupt(format!("{what}: {e}")))
        };
        Ok(StoredEvent {
            cursor: self.cursor,
            event: SerializedEvent {
                payload: parse(&self.payload, "payload")?,
                metadata: parse(&self.metadata, "metadata")?,
                aggregate_type: self.aggregate_type,
                aggregate_id: self.aggregate_id,
                sequence: usize::try_from(self.sequence)
                    .map_err(|_| JournalError::Corrupt("sequence out of range".into()))?,
                event_type: self.event_type,
                event_version: self.event_version,
            },
        })
    }
}

/// One event to append (the aggregate and sequence come from the [`AppendRequest`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
}

/// An `Idempotency-Key` record to write in the same transaction as the events it produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewIdempotencyRecord {
    /// Who the key belongs to (`user:42`, `guest:abc`); keys of different scopes never collide.
    pub scope: String,
    pub key: String,
    /// Hash of the request (method, path, body) that first used the key.
    pub request_hash: String,
    pub created_at: Timestamp,
}

/// A request's single-use token nonce, recorded in the same transaction as the events the request
/// appended (see `engine::auth::NonceTicket`): the command and the proof that its token was used
/// become durable together, with one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNonce {
    pub nonce: String,
    /// Unix seconds after which the token can no longer pass verification (the row may go).
    pub expires_at_unix: i64,
}

/// A stored `Idempotency-Key` record: which request used the key and which events it appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub request_hash: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub created_at: Timestamp,
}

/// Append `events` to one aggregate, expecting its current last sequence to be
/// `expected_sequence` (0 for a new aggregate). The events get sequences
/// `expected_sequence + 1 ..`.
#[derive(Clone, Debug)]
pub struct AppendRequest<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub expected_sequence: u64,
    pub events: &'a [NewEvent],
    pub idempotency: Option<&'a NewIdempotencyRecord>,
    /// The request's token nonce, if it rides in this append.
    pub nonce: Option<&'a NewNonce>,
}

/// What a successful append wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Sequence of the last event written.
    pub last_sequence: u64,
    /// Global cursor of each appended event, in sequence order.
    pub cursors: Vec<GlobalCursor>,
}

/// Journal failures that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another writer appended to the aggregate first (optimistic concurrency). Reload and retry.
    #[error("{aggregate_type}/{aggregate_id} moved past sequence {expected_sequence}")]
    Conflict {
        aggregate_type: String,
        aggregate_id: String,
        expected_sequence: u64,
    },
    /// The idempotency key was recorded by another request first. Look the record up.
    #[error("idempotency key already recorded")]
    IdempotencyKeyTaken,
    /// The token nonce riding in the append was already used: nothing was written.
    #[error("token nonce already used")]
    NonceTaken,
    /// The request itself is malformed (e.g. no events); a bug in the caller.
    #[error("invalid append: {0}")]
    InvalidAppend(&'static str),
    /// A stored row could not be decoded.
    #[error("corrupt journal row: {0}")]
    Corrupt(String),
    /// The database failed or could not be reached. The outcome of an append that fails this
    /// way is unknown: it may have committed.
    #[error("journal database error")]
    Database(#[source] sqlx::Error),
}

impl JournalError {
    /// True when the database could not be reached (as opposed to rejecting a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            JournalError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// The highest point a global reader can currently see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalHead {
    /// Highest position allocated so far (committed or not); an upper bound for lag.
    pub max_position: u64,
}

/// The append-only event journal. Both backends implement it and pass the same conformance suite.
///
/// Methods are generic futures rather than `async_trait` objects: the runtime picks a backend
/// through [`AnyJournal`] (an enum), so nothing needs `dyn Journal`.
pub trait Journal: Send + Sync {
    /// Appends events (and the optional idempotency record and token nonce) atomically.
    ///
    /// # Errors
    /// [`JournalError::Conflict`] if the aggregate is no longer at `expected_sequence`;
    /// [`JournalError::IdempotencyKeyTaken`] if the key exists; [`JournalError::NonceTaken`] if
    /// the nonce was used; nothing is written in any of these cases.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future mid-flight leaves the outcome unknown (like a crash).
    fn append(
        &self,
        request: AppendRequest<'_>,
    ) -> impl Future<Output = Result<Appended, JournalError>> + Send;

    /// One aggregate's events with `sequence > after_sequence`, in sequence order.
    fn load<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> impl Future<Output = Result<Vec<SerializedEvent>, JournalError>> + Send;

    /// Up to `limit` committed events after `after`, in global order. Never returns an event
    /// twice across successive calls that pass the last returned cursor, and never skips one:
    /// events whose transaction might still commit below the returned range are held back.
    fn read_all(
        &self,
        after: GlobalCursor,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, JournalError>> + Send;

    /// Up to `limit` events of one aggregate with `sequence > after_sequence`, in sequence order,
    /// with their global cursors (for projectors: an aggregate's birth record, or the events of
    /// one entity up to a checkpoint). Unlike [`Journal::load`] this does not upcast or decode.
    fn load_stored(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, JournalError>> + Send;

    /// The idempotency record for `(scope, key)`, if any.
    fn find_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>, JournalError>> + Send;

    /// Cheap facts about the journal's end, for lag metrics.
    fn head(&self) -> impl Future<Output = Result<JournalHead, JournalError>> + Send;

    /// How many events lie after `after` (committed or in flight), counting at most `cap`.
    fn count_after(
        &self,
        after: GlobalCursor,
        cap: u64,
    ) -> impl Future<Output = Result<u64, JournalError>> + Send;
}

/// Serialises metadata deterministically (sorted keys, compact).
pub(crate) fn metadata_json(metadata: &EventMetadata) -> String {
    serde_json::to_string(metadata).expect("a map of strings always serialises")
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, JournalError> {
    u64::try_from(value).map_err(|_| JournalError::Corrupt(format!("negative {what}: {value}")))
}

pub(crate) fn to_i64(value: u64, what: &'static str) -> Result<i64, JournalError> {
    i64::try_from(value).map_err(|_| JournalError::InvalidAppend(what))
}

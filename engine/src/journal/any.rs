//! `AnyJournal`: the backend chosen at start-up (PostgreSQL when a URL is given, SQLite otherwise).

use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;

use super::{
    AppendRequest, Appended, GlobalCursor, IdempotencyRecord, Journal, JournalError, JournalHead,
    PgJournal, RawStoredEvent, SqliteJournal, StoredEvent,
};

/// Either journal backend, dispatched by `match` (no boxing on the hot path).
#[derive(Clone)]
pub enum AnyJournal {
    Postgres(PgJournal),
    Sqlite(SqliteJournal),
}

impl AnyJournal {
    /// [`Journal::read_all`] with payloads and metadata left as their stored text.
    ///
    /// # Errors
    /// As [`Journal::read_all`].
    pub async fn read_all_raw(
        &self,
        after: GlobalCursor,
        limit: usize,
    ) -> Result<Vec<RawStoredEvent>, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.read_all_raw(after, limit).await,
            AnyJournal::Sqlite(j) => j.read_all_raw(after, limit).await,
        }
    }

    /// `"postgres"` or `"sqlite"`, for logs and `/readyz`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            AnyJournal::Postgres(_) => "postgres",
            AnyJournal::Sqlite(_) => "sqlite",
        }
    }
}

impl Journal for AnyJournal {
    async fn append(&self, request: AppendRequest<'_>) -> Result<Appended, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.append(request).await,
            AnyJournal::Sqlite(j) => j.append(request).await,
        }
    }

    async fn load<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<SerializedEvent>, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.load::<A>(aggregate_id, after_sequence).await,
            AnyJournal::Sqlite(j) => j.load::<A>(aggregate_id, after_sequence).await,
        }
    }

    async fn read_all(
        &self,
        after: GlobalCursor,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.read_all(after, limit).await,
            AnyJournal::Sqlite(j) => j.read_all(after, limit).await,
        }
    }

    async fn load_stored(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        match self {
            AnyJournal::Postgres(j) => {
                j.load_stored(aggregate_type, aggregate_id, after_sequence, limit)
                    .await
            }
            AnyJournal::Sqlite(j) => {
                j.load_stored(aggregate_type, aggregate_id, after_sequence, limit)
                    .await
            }
        }
    }

    async fn find_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.find_idempotency(scope, key).await,
            AnyJournal::Sqlite(j) => j.find_idempotency(scope, key).await,
        }
    }

    async fn head(&self) -> Result<JournalHead, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.head().await,
            AnyJournal::Sqlite(j) => j.head().await,
        }
    }

    async fn count_after(&self, after: GlobalCursor, cap: u64) -> Result<u64, JournalError> {
        match self {
            AnyJournal::Postgres(j) => j.count_after(after, cap).await,
            AnyJournal::Sqlite(j) => j.count_after(after, cap).await,
        }
    }
}

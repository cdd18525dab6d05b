//! Embedded SQLite journal: the default when no PostgreSQL URL is configured.
//!
//! SQLite has one writer at a time; `BEGIN IMMEDIATE` takes the write lock up front, so
//! `position` values are handed out in commit order and a plain `position > cursor` read is
//! gap-safe. Appends go through the file's [`SqliteWriter`] (group commit: concurrent appends share
//! one transaction and one fsync, each acknowledged only once durable); its in-process lock queues
//! this process's writers so they wait on a cheap lock instead of spinning on `SQLITE_BUSY`; other
//! processes are held off by the busy timeout.

use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use std::sync::Arc;

use super::sqlite_writer::{OwnedAppend, SqliteWriter};
use super::{
    metadata_json, to_i64, to_u64, AppendRequest, Appended, GlobalCursor, IdempotencyRecord,
    Journal, JournalError, JournalHead, RawStoredEvent, StoredEvent,
};

/// The SQLite journal. Cheap to clone.
#[derive(Clone)]
pub struct SqliteJournal {
    pool: SqlitePool,
    /// The file's writer: group commit for appends, and the lock shared with the other writers
    /// of the same file (the projection store) through [`crate::Database`].
    writer: Arc<SqliteWriter>,
}

impl SqliteJournal {
    /// Wraps a pool whose database has had `engine::SQLITE_MIGRATOR` applied.
    pub fn new(pool: SqlitePool) -> Self {
        Self::with_writer(pool, Arc::default())
    }

    /// Like [`SqliteJournal::new`], sharing `writer` with the other writers of the file.
    pub fn with_writer(pool: SqlitePool, writer: Arc<SqliteWriter>) -> Self {
        Self { pool, writer }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The file's writer; every writer to this database file should hold its lock.
    pub fn writer(&self) -> Arc<SqliteWriter> {
        self.writer.clone()
    }

    /// [`Journal::read_all`] with payloads and metadata left as their stored text.
    ///
    /// # Errors
    /// When the database fails or a row is malformed.
    pub async fn read_all_raw(
        &self,
        after: GlobalCursor,
        limit: usize,
    ) -> Result<Vec<RawStoredEvent>, JournalError> {
        let rows = sqlx::query(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata
               FROM events
              WHERE position > $1
              ORDER BY position
              LIMIT $2",
        )
        .bind(to_i64(after.position(), "cursor out of range")?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(JournalError::Database)?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.try_get("position").map_err(decode)?;
                RawStoredEvent::from_row(row, GlobalCursor::new(0, to_u64(position, "position")?))
            })
            .collect()
    }
}

fn decode(e: sqlx::Error) -> JournalError {
    JournalError::Corrupt(e.to_string())
}

fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, JournalError> {
    serde_json::from_str(text).map_err(|e| JournalError::Corrupt(format!("{what}: {e}")))
}

fn serialized_event(row: &SqliteRow) -> Result<SerializedEvent, JournalError> {
    let payload: String = row.try_get("payload").map_err(decode)?;
    let metadata: String = row.try_get("metadata").map_err(decode)?;
    Ok(SerializedEvent {
        aggregate_type: row.try_get("aggregate_type").map_err(decode)?,
        aggregate_id: row.try_get("aggregate_id").map_err(decode)?,
        sequence: to_u64(row.try_get("sequence").map_err(decode)?, "sequence")? as usize,
        event_type: row.try_get("event_type").map_err(decode)?,
        event_version: row.try_get("event_version").map_err(decode)?,
        payload: parse_json(&payload, "payload")?,
        metadata: parse_json(&metadata, "metadata")?,
    })
}

fn stored_event(row: &SqliteRow) -> Result<StoredEvent, JournalError> {
    let position: i64 = row.try_get("position").map_err(decode)?;
    Ok(StoredEvent {
        cursor: GlobalCursor::new(0, to_u64(position, "position")?),
        event: serialized_event(row)?,
    })
}

impl Journal for SqliteJournal {
    async fn append(&self, request: AppendRequest<'_>) -> Result<Appended, JournalError> {
        if request.events.is_empty() {
            return Err(JournalError::InvalidAppend(
                "an append needs at least one event",
            ));
        }
        let append = OwnedAppend {
            aggregate_type: request.aggregate_type.to_owned(),
            aggregate_id: request.aggregate_id.to_owned(),
            expected_sequence: request.expected_sequence,
            events: request
                .events
                .iter()
                .map(|e| {
                    (
                        e.event_type.clone(),
                        e.event_version.clone(),
                        e.payload.to_string(),
                        metadata_json(&e.metadata),
                    )
                })
                .collect(),
            idempotency: request.idempotency.cloned(),
            nonce: request.nonce.cloned(),
        };
        self.writer.append(&self.pool, append).await
    }

    async fn load<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<SerializedEvent>, JournalError> {
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(to_i64(after_sequence, "sequence out of range")?)
        .fetch_all(&self.pool)
        .await
        .map_err(JournalError::Database)?;
        rows.iter().map(serialized_event).collect()
    }

    async fn read_all(
        &self,
        after: GlobalCursor,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        self.read_all_raw(after, limit)
            .await?
            .into_iter()
            .map(RawStoredEvent::parse)
            .collect()
    }

    async fn load_stored(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        let rows = sqlx::query(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence
              LIMIT $4",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(to_i64(after_sequence, "sequence out of range")?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(JournalError::Database)?;
        rows.iter().map(stored_event).collect()
    }

    async fn find_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, JournalError> {
        let row = sqlx::query(
            "SELECT scope, idempotency_key, request_hash, aggregate_type, aggregate_id,
                    first_sequence, last_sequence, created_at
               FROM runtime_idempotency_keys
              WHERE scope = $1 AND idempotency_key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(JournalError::Database)?;
        let Some(row) = row else { return Ok(None) };
        let created_at: String = row.try_get("created_at").map_err(decode)?;
        Ok(Some(IdempotencyRecord {
            scope: row.try_get("scope").map_err(decode)?,
            key: row.try_get("idempotency_key").map_err(decode)?,
            request_hash: row.try_get("request_hash").map_err(decode)?,
            aggregate_type: row.try_get("aggregate_type").map_err(decode)?,
            aggregate_id: row.try_get("aggregate_id").map_err(decode)?,
            first_sequence: to_u64(row.try_get("first_sequence").map_err(decode)?, "sequence")?,
            last_sequence: to_u64(row.try_get("last_sequence").map_err(decode)?, "sequence")?,
            created_at: created_at
                .parse()
                .map_err(|e| JournalError::Corrupt(format!("created_at: {e}")))?,
        }))
    }

    async fn head(&self) -> Result<JournalHead, JournalError> {
        let row = sqlx::query("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(JournalError::Database)?;
        let max_position: i64 = row.try_get(0).map_err(decode)?;
        Ok(JournalHead {
            max_position: to_u64(max_position, "position")?,
        })
    }

    async fn count_after(&self, after: GlobalCursor, cap: u64) -> Result<u64, JournalError> {
        let row =
            sqlx::query("SELECT count(*) FROM (SELECT 1 FROM events WHERE position > $1 LIMIT $2)")
                .bind(to_i64(after.position(), "cursor out of range")?)
                .bind(to_i64(cap, "cap out of range")?)
                .fetch_one(&self.pool)
                .await
                .map_err(JournalError::Database)?;
        let count: i64 = row.try_get(0).map_err(decode)?;
        to_u64(count, "count")
    }
}

//! Listing aggregates by what their birth event recorded: the runs of a thread, the workers of an
//! owner. These read the journal's first event of each aggregate through partial expression
//! indexes (migration `20261125000500_listing_indexes`), newest first. Read models built by the
//! projectors are the scalable source for richer queries; these lookups keep the command API
//! self-sufficient.

use sqlx::Row;

use crate::db::Database;
use crate::journal::JournalError;

/// Ids of the runs created for `thread_id`, newest first, at most `limit`.
///
/// # Errors
/// [`JournalError::Database`] when the query fails.
pub async fn runs_of_thread(
    database: &Database,
    thread_id: &str,
    limit: usize,
) -> Result<Vec<String>, JournalError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match database {
        Database::Postgres(pool) => sqlx::query(
            "SELECT aggregate_id FROM events
                  WHERE aggregate_type = 'run' AND sequence = 1
                    AND (payload->'RunCreated'->>'thread_id') = $1
                  ORDER BY position DESC LIMIT $2",
        )
        .bind(thread_id)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
        Database::Sqlite { pool, .. } => sqlx::query(
            "SELECT aggregate_id FROM events
                  WHERE aggregate_type = 'run' AND sequence = 1
                    AND json_extract(payload, '$.RunCreated.thread_id') = $1
                  ORDER BY position DESC LIMIT $2",
        )
        .bind(thread_id)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
    };
    rows.map_err(JournalError::Database)
}

/// Ids of the workers first registered by the owner `(kind, id)` (`user`/`guest`), newest first.
///
/// # Errors
/// [`JournalError::Database`] when the query fails.
pub async fn workers_of_owner(
    database: &Database,
    owner_kind: &str,
    owner_id: &str,
    limit: usize,
) -> Result<Vec<String>, JournalError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match database {
        Database::Postgres(pool) => sqlx::query(
            "SELECT aggregate_id FROM events
                  WHERE aggregate_type = 'codex_worker' AND sequence = 1
                    AND (payload->'WorkerRegistered'->'owner'->>'id') = $1
                    AND (payload->'WorkerRegistered'->'owner'->>'kind') = $2
                  ORDER BY position DESC LIMIT $3",
        )
        .bind(owner_id)
        .bind(owner_kind)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
        Database::Sqlite { pool, .. } => sqlx::query(
            "SELECT aggregate_id FROM events
                  WHERE aggregate_type = 'codex_worker' AND sequence = 1
                    AND json_extract(payload, '$.WorkerRegistered.owner.id') = $1
                    AND json_extract(payload, '$.WorkerRegistered.owner.kind') = $2
                  ORDER BY position DESC LIMIT $3",
        )
        .bind(owner_id)
        .bind(owner_kind)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
    };
    rows.map_err(JournalError::Database)
}

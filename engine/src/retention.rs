//! Expiry of the journal's side records that exist only for retries: `Idempotency-Key` records
//! are kept for `--idempotency-ttl` (24 h by default, as payment APIs do) and then deleted by a
//! periodic task, so unauthenticated-looking growth (every distinct key a client ever sent) is
//! bounded by time. Events are never pruned: the journal stays the whole history. Nonces expire
//! with their tokens (`auth::NonceStore::prune`).

use aggregates::Timestamp;

use crate::db::Database;

/// Deletes idempotency records created before `cutoff`. Returns how many.
///
/// # Errors
/// When the database fails.
pub async fn prune_idempotency_keys(db: &Database, cutoff: Timestamp) -> Result<u64, sqlx::Error> {
    let cutoff = cutoff.to_rfc3339();
    Ok(match db {
        Database::Postgres(pool) => {
            sqlx::query("DELETE FROM runtime.idempotency_keys WHERE created_at < $1::timestamptz")
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected()
        }
        Database::Sqlite { pool, write_lock } => {
            let _writer = write_lock.lock().await;
            // Stored as RFC 3339 with a variable number of sub-second digits: compare as times.
            sqlx::query(
                "DELETE FROM runtime_idempotency_keys WHERE julianday(created_at) < julianday($1)",
            )
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected()
        }
    })
}

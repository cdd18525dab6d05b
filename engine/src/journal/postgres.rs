//! PostgreSQL journal: postgres-es's `events` table, with a gap-safe global read.
//!
//! Appends are one statement (events, idempotency record and token nonce together, autocommit), so a command
//! costs one round trip and one durable commit. Aggregate loads go through postgres-es's own
//! repository. The global read orders by `(transaction_id, position)` and stops below the oldest
//! running transaction (`pg_snapshot_xmin`), see `docs/adr/0002-global-order.md`.

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::{
    metadata_json, to_i64, to_u64, AppendRequest, Appended, GlobalCursor, IdempotencyRecord,
    Journal, JournalError, JournalHead, RawStoredEvent, StoredEvent,
};

/// The append statement of one shape: one autocommit statement that inserts the events and,
/// only when the command carries them, its idempotency record and its token nonce (each a
/// data-modifying CTE). A single event is a `VALUES` row and a batch an `unnest` of arrays;
/// parts a command does not need are left out rather than skipped by a `WHERE false`, since each
/// costs the server planning and opening its table (together ~20% of the server's CPU per
/// append; docs/BENCHMARKS.md § append). Parameters: `$1`/`$2` the aggregate, `$3`–`$7` the
/// events (scalars or arrays), then the idempotency record's six, then the nonce's two.
fn append_statement(batch: bool, idempotency: bool, nonce: bool) -> String {
    let mut next = 8;
    let mut param = || {
        next += 1;
        next - 1
    };
    let mut ctes = Vec::new();
    if idempotency {
        let [scope, key, hash, first, last, at] = std::array::from_fn(|_| param());
        ctes.push(format!(
            "idem AS (
    INSERT INTO runtime.idempotency_keys
        (scope, idempotency_key, request_hash, aggregate_type, aggregate_id,
         first_sequence, last_sequence, created_at)
    VALUES (${scope}::text, ${key}::text, ${hash}::text, $1::text, $2::text, ${first}::bigint,
            ${last}::bigint, ${at}::timestamptz)
)"
        ));
    }
    if nonce {
        let [value, expires] = std::array::from_fn(|_| param());
        ctes.push(format!(
            "nonce AS (
    INSERT INTO runtime.auth_nonces (nonce, expires_at)
    VALUES (${value}::text, to_timestamp(${expires}::float8))
)"
        ));
    }
    let with = if ctes.is_empty() {
        String::new()
    } else {
        format!("WITH {}\n", ctes.join(", "))
    };
    let rows = if batch {
        "SELECT $1::text, $2::text, e.sequence, e.event_type, e.event_version, e.payload::json, e.metadata::json
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
       AS e(sequence, event_type, event_version, payload, metadata)"
    } else {
        "VALUES ($1::text, $2::text, $3::bigint, $4::text, $5::text, $6::json, $7::json)"
    };
    format!(
        "{with}INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
{rows}
RETURNING transaction_id, position, sequence"
    )
}

/// Every shape of [`append_statement`], built once, indexed by [`append_shape`].
static APPEND: std::sync::LazyLock<[String; 8]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|shape| append_statement(shape & 4 != 0, shape & 2 != 0, shape & 1 != 0))
});

/// The index in [`APPEND`] of a request's statement.
fn append_shape(request: &AppendRequest<'_>) -> usize {
    usize::from(request.events.len() > 1) << 2
        | usize::from(request.idempotency.is_some()) << 1
        | usize::from(request.nonce.is_some())
}

const READ_ALL: &str = concat!(
    r#"
SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload::text AS payload, metadata::text AS metadata
  FROM events
 WHERE (transaction_id, position) > ($1, $2)
   AND transaction_id < "#,
    crate::pg_read_horizon!(),
    r#"
 ORDER BY transaction_id, position
 LIMIT $3
"#
);

const LOAD_STORED: &str = r#"
SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4
"#;

const FIND_IDEMPOTENCY: &str = r#"
SELECT scope, idempotency_key, request_hash, aggregate_type, aggregate_id,
       first_sequence, last_sequence, created_at
  FROM runtime.idempotency_keys
 WHERE scope = $1 AND idempotency_key = $2
"#;

/// The PostgreSQL journal. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct PgJournal {
    pool: PgPool,
}

impl PgJournal {
    /// Wraps a pool whose database has had `engine::PG_MIGRATOR` applied.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
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
        let rows = sqlx::query(READ_ALL)
            .bind(to_i64(after.transaction(), "cursor out of range")?)
            .bind(to_i64(after.position(), "cursor out of range")?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(JournalError::Database)?;
        rows.iter()
            .map(|row| {
                let decode = |e: sqlx::Error| JournalError::Corrupt(e.to_string());
                let tx: i64 = row.try_get("transaction_id").map_err(decode)?;
                let position: i64 = row.try_get("position").map_err(decode)?;
                RawStoredEvent::from_row(
                    row,
                    GlobalCursor::new(to_u64(tx, "transaction id")?, to_u64(position, "position")?),
                )
            })
            .collect()
    }
}

fn persistence_error(error: PersistenceError) -> JournalError {
    match error {
        PersistenceError::OptimisticLockError => {
            JournalError::Corrupt("unexpected optimistic lock error on read".into())
        }
        PersistenceError::ConnectionError(e) | PersistenceError::UnknownError(e) => {
            match e.downcast::<sqlx::Error>() {
                Ok(sqlx_error) => JournalError::Database(*sqlx_error),
                Err(other) => JournalError::Corrupt(other.to_string()),
            }
        }
        PersistenceError::DeserializationError(e) => JournalError::Corrupt(e.to_string()),
    }
}

fn serialized_event(row: &PgRow) -> Result<SerializedEvent, JournalError> {
    let decode = |e: sqlx::Error| JournalError::Corrupt(e.to_string());
    Ok(SerializedEvent {
        aggregate_type: row.try_get("aggregate_type").map_err(decode)?,
        aggregate_id: row.try_get("aggregate_id").map_err(decode)?,
        sequence: to_u64(row.try_get("sequence").map_err(decode)?, "sequence")? as usize,
        event_type: row.try_get("event_type").map_err(decode)?,
        event_version: row.try_get("event_version").map_err(decode)?,
        payload: row.try_get("payload").map_err(decode)?,
        metadata: row.try_get("metadata").map_err(decode)?,
    })
}

fn stored_event(row: &PgRow) -> Result<StoredEvent, JournalError> {
    let decode = |e: sqlx::Error| JournalError::Corrupt(e.to_string());
    let tx: i64 = row.try_get("transaction_id").map_err(decode)?;
    let position: i64 = row.try_get("position").map_err(decode)?;
    Ok(StoredEvent {
        cursor: GlobalCursor::new(to_u64(tx, "transaction id")?, to_u64(position, "position")?),
        event: serialized_event(row)?,
    })
}

fn classify(error: sqlx::Error, request: &AppendRequest<'_>) -> JournalError {
    if let sqlx::Error::Database(db) = &error {
        if db.code().as_deref() == Some("23505") {
            return match db.constraint() {
                Some("idempotency_keys_pkey") => JournalError::IdempotencyKeyTaken,
                Some("auth_nonces_pkey") => JournalError::NonceTaken,
                _ => JournalError::Conflict {
                    aggregate_type: request.aggregate_type.to_owned(),
                    aggregate_id: request.aggregate_id.to_owned(),
                    expected_sequence: request.expected_sequence,
                },
            };
        }
    }
    JournalError::Database(error)
}

impl Journal for PgJournal {
    async fn append(&self, request: AppendRequest<'_>) -> Result<Appended, JournalError> {
        if request.events.is_empty() {
            return Err(JournalError::InvalidAppend(
                "an append needs at least one event",
            ));
        }
        let first = request.expected_sequence + 1;
        let last = request.expected_sequence + request.events.len() as u64;
        let query = sqlx::query(&APPEND[append_shape(&request)])
            .bind(request.aggregate_type)
            .bind(request.aggregate_id);
        let mut query = if let [event] = request.events {
            query
                .bind(to_i64(first, "sequence out of range")?)
                .bind(event.event_type.as_str())
                .bind(event.event_version.as_str())
                .bind(event.payload.to_string())
                .bind(metadata_json(&event.metadata))
        } else {
            let mut sequences = Vec::with_capacity(request.events.len());
            let mut types = Vec::with_capacity(request.events.len());
            let mut versions = Vec::with_capacity(request.events.len());
            let mut payloads = Vec::with_capacity(request.events.len());
            let mut metadata = Vec::with_capacity(request.events.len());
            for (offset, event) in request.events.iter().enumerate() {
                sequences.push(to_i64(first + offset as u64, "sequence out of range")?);
                types.push(event.event_type.as_str());
                versions.push(event.event_version.as_str());
                payloads.push(event.payload.to_string());
                metadata.push(metadata_json(&event.metadata));
            }
            query
                .bind(sequences)
                .bind(types)
                .bind(versions)
                .bind(payloads)
                .bind(metadata)
        };
        if let Some(idem) = request.idempotency {
            query = query
                .bind(idem.scope.as_str())
                .bind(idem.key.as_str())
                .bind(idem.request_hash.as_str())
                .bind(to_i64(first, "sequence out of range")?)
                .bind(to_i64(last, "sequence out of range")?)
                .bind(idem.created_at.as_datetime());
        }
        if let Some(nonce) = request.nonce {
            query = query
                .bind(nonce.nonce.as_str())
                .bind(nonce.expires_at_unix as f64);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify(e, &request))?;
        let mut written = rows
            .iter()
            .map(|row| {
                let tx: i64 = row.try_get(0).map_err(JournalError::Database)?;
                let position: i64 = row.try_get(1).map_err(JournalError::Database)?;
                let sequence: i64 = row.try_get(2).map_err(JournalError::Database)?;
                Ok((
                    sequence,
                    GlobalCursor::new(to_u64(tx, "transaction id")?, to_u64(position, "position")?),
                ))
            })
            .collect::<Result<Vec<_>, JournalError>>()?;
        written.sort_by_key(|(sequence, _)| *sequence);
        Ok(Appended {
            last_sequence: last,
            cursors: written.into_iter().map(|(_, cursor)| cursor).collect(),
        })
    }

    async fn load<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<SerializedEvent>, JournalError> {
        // Aggregate loads go through postgres-es's repository: the journal is its table.
        let repo = PostgresEventRepository::new(self.pool.clone());
        let events = if after_sequence == 0 {
            repo.get_events::<A>(aggregate_id).await
        } else {
            let after = usize::try_from(after_sequence)
                .map_err(|_| JournalError::InvalidAppend("sequence does not fit in usize"))?;
            repo.get_last_events::<A>(aggregate_id, after).await
        };
        events.map_err(persistence_error)
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
        let rows = sqlx::query(LOAD_STORED)
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
        let row = sqlx::query(FIND_IDEMPOTENCY)
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(JournalError::Database)?;
        let Some(row) = row else { return Ok(None) };
        let decode = |e: sqlx::Error| JournalError::Corrupt(e.to_string());
        let created_at: chrono::DateTime<chrono::Utc> =
            row.try_get("created_at").map_err(decode)?;
        Ok(Some(IdempotencyRecord {
            scope: row.try_get("scope").map_err(decode)?,
            key: row.try_get("idempotency_key").map_err(decode)?,
            request_hash: row.try_get("request_hash").map_err(decode)?,
            aggregate_type: row.try_get("aggregate_type").map_err(decode)?,
            aggregate_id: row.try_get("aggregate_id").map_err(decode)?,
            first_sequence: to_u64(row.try_get("first_sequence").map_err(decode)?, "sequence")?,
            last_sequence: to_u64(row.try_get("last_sequence").map_err(decode)?, "sequence")?,
            created_at: aggregates::Timestamp::from_datetime(created_at),
        }))
    }

    async fn head(&self) -> Result<JournalHead, JournalError> {
        // The identity sequence's last value is the highest position ever allocated; reading it is
        // O(1), unlike max(position) (which has no index of its own).
        let row = sqlx::query(
            "SELECT coalesce((SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                                FROM events_position_seq), 0) AS max_position",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(JournalError::Database)?;
        let max_position: i64 = row.try_get(0).map_err(JournalError::Database)?;
        Ok(JournalHead {
            max_position: to_u64(max_position, "position")?,
        })
    }

    async fn count_after(&self, after: GlobalCursor, cap: u64) -> Result<u64, JournalError> {
        let row = sqlx::query(
            "SELECT count(*) FROM (SELECT 1 FROM events
                                    WHERE (transaction_id, position) > ($1, $2) LIMIT $3) AS tail",
        )
        .bind(to_i64(after.transaction(), "cursor out of range")?)
        .bind(to_i64(after.position(), "cursor out of range")?)
        .bind(to_i64(cap, "cap out of range")?)
        .fetch_one(&self.pool)
        .await
        .map_err(JournalError::Database)?;
        let count: i64 = row.try_get(0).map_err(JournalError::Database)?;
        to_u64(count, "count")
    }
}

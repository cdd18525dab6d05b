//! The projection store in the embedded SQLite file (`runtime_*` tables). Writers take the
//! process-wide writer lock and `BEGIN IMMEDIATE`, like journal appends; reads that must see one
//! snapshot (floor and rows, head and documents) run in one read transaction (WAL snapshots).

use std::sync::Arc;

use engine::journal::GlobalCursor;
use serde_json::json;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use tokio::sync::OwnedMutexGuard;

use super::{
    epoch_marker_key, to_i64, to_u64, BatchCommit, Checkpoint, Committed, DocRow, DocWrite,
    HydratePage, Hydration, NewRow, ProjectorSpec, Pruned, ReadError, RebuildState, Repaired,
    StoreError, StreamRow, Swapped, Target, TopicState,
};
use crate::model::{DocOwner, OwnerFilter};

const CHECKPOINT_COLUMNS: &str = "projector, topic, projection_version, cursor_transaction, \
    cursor_position, events_projected, lease_owner, lease_expires_at_ms, rebuild_requested, \
    rebuild_version, rebuild_cursor_transaction, rebuild_cursor_position, rebuild_events, \
    rebuild_started_at_ms, last_rebuilt_at_ms, updated_at_ms";

const DOC_COLUMNS: &str = "doc_key, doc_version, payload, payload_hash, watermark, \
    owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms";

const OWNER_CLAUSE: &str = "($3 OR ((x.owner_user_id = $4 OR x.owner_guest_scope = $5) \
    AND x.owner_org_id IS $6))";

/// The SQLite projection store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    write_lock: Arc<engine::journal::SqliteWriter>,
}

fn table(spec: &ProjectorSpec, target: Target) -> String {
    match target {
        Target::Live => format!("runtime_{}", spec.table),
        Target::Rebuild => format!("runtime_{}_rebuild", spec.table),
    }
}

fn checkpoint(row: &SqliteRow) -> Result<Checkpoint, StoreError> {
    let rebuild_version: Option<i64> = row.try_get("rebuild_version")?;
    let rebuild = match rebuild_version {
        Some(version) => Some(RebuildState {
            version: u32::try_from(version).unwrap_or_default(),
            cursor: GlobalCursor::new(
                to_u64(
                    row.try_get::<Option<i64>, _>("rebuild_cursor_transaction")?
                        .unwrap_or(0),
                    "cursor",
                )?,
                to_u64(
                    row.try_get::<Option<i64>, _>("rebuild_cursor_position")?
                        .unwrap_or(0),
                    "cursor",
                )?,
            ),
            events: to_u64(row.try_get("rebuild_events")?, "count")?,
            started_at_ms: row
                .try_get::<Option<i64>, _>("rebuild_started_at_ms")?
                .unwrap_or(0),
        }),
        None => None,
    };
    Ok(Checkpoint {
        projector: row.try_get("projector")?,
        topic: row.try_get("topic")?,
        projection_version: u32::try_from(row.try_get::<i64, _>("projection_version")?)
            .unwrap_or_default(),
        cursor: GlobalCursor::new(
            to_u64(row.try_get("cursor_transaction")?, "cursor")?,
            to_u64(row.try_get("cursor_position")?, "cursor")?,
        ),
        events_projected: to_u64(row.try_get("events_projected")?, "count")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at_ms: row.try_get("lease_expires_at_ms")?,
        rebuild_requested: row.try_get::<i64, _>("rebuild_requested")? != 0,
        rebuild,
        last_rebuilt_at_ms: row.try_get("last_rebuilt_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn owner(row: &SqliteRow) -> Result<DocOwner, sqlx::Error> {
    Ok(DocOwner {
        user_id: row.try_get("owner_user_id")?,
        guest_scope: row.try_get("owner_guest_scope")?,
        org_id: row.try_get("owner_org_id")?,
    })
}

fn doc_row(row: &SqliteRow) -> Result<DocRow, StoreError> {
    Ok(DocRow {
        doc_key: row.try_get("doc_key")?,
        doc_version: to_u64(row.try_get("doc_version")?, "doc_version")?,
        payload: row.try_get("payload")?,
        payload_hash: row.try_get("payload_hash")?,
        watermark: to_u64(row.try_get("watermark")?, "watermark")?,
        owner: owner(row)?,
        projected_at_ms: row.try_get("projected_at_ms")?,
    })
}

fn topic_state(topic: &str, row: &SqliteRow) -> Result<TopicState, StoreError> {
    Ok(TopicState {
        topic: topic.to_owned(),
        head_watermark: to_u64(row.try_get("head_watermark")?, "watermark")?,
        retention_floor: to_u64(row.try_get("retention_floor")?, "watermark")?,
        epoch: to_u64(row.try_get("epoch")?, "epoch")?,
        epoch_start: to_u64(row.try_get("epoch_start")?, "watermark")?,
    })
}

fn filter_binds(filter: &OwnerFilter) -> (bool, Option<&str>, Option<&str>, Option<&str>) {
    match filter {
        OwnerFilter::Any => (true, None, None, None),
        OwnerFilter::Principal {
            user_id,
            guest_scope,
            org_id,
        } => (
            false,
            user_id.as_deref(),
            guest_scope.as_deref(),
            org_id.as_deref(),
        ),
    }
}

/// A write transaction with the process's writer lock held.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _guard: OwnedMutexGuard<()>,
}

struct Locked {
    lease_owner: Option<String>,
    cursor: GlobalCursor,
    rebuild_cursor: Option<GlobalCursor>,
    rebuild_version: Option<i64>,
}

async fn lock_checkpoint(
    tx: &mut Transaction<'static, Sqlite>,
    projector: &str,
) -> Result<Locked, StoreError> {
    // BEGIN IMMEDIATE already holds the database's write lock: no row lock is needed.
    let row = sqlx::query(
        "SELECT lease_owner, cursor_transaction, cursor_position, rebuild_version,
                rebuild_cursor_transaction, rebuild_cursor_position
           FROM runtime_projection_checkpoints WHERE projector = $1",
    )
    .bind(projector)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::UnknownProjector(projector.to_owned()))?;
    let rebuild_version: Option<i64> = row.try_get("rebuild_version")?;
    let rebuild_cursor = match rebuild_version {
        Some(_) => Some(GlobalCursor::new(
            to_u64(
                row.try_get::<Option<i64>, _>("rebuild_cursor_transaction")?
                    .unwrap_or(0),
                "cursor",
            )?,
            to_u64(
                row.try_get::<Option<i64>, _>("rebuild_cursor_position")?
                    .unwrap_or(0),
                "cursor",
            )?,
        )),
        None => None,
    };
    Ok(Locked {
        lease_owner: row.try_get("lease_owner")?,
        cursor: GlobalCursor::new(
            to_u64(row.try_get("cursor_transaction")?, "cursor")?,
            to_u64(row.try_get("cursor_position")?, "cursor")?,
        ),
        rebuild_cursor,
        rebuild_version,
    })
}

async fn allocate(
    tx: &mut Transaction<'static, Sqlite>,
    topic: &str,
    n: u64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let head: i64 = sqlx::query_scalar(
        "UPDATE runtime_sync_topic_sequences
            SET head_watermark = head_watermark + $2, updated_at_ms = $3
          WHERE topic = $1
      RETURNING head_watermark",
    )
    .bind(topic)
    .bind(to_i64(n))
    .bind(now_ms)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::Corrupt(format!("topic {topic} is not registered")))?;
    Ok(to_u64(head, "watermark")? + 1 - n)
}

async fn insert_row(
    tx: &mut Transaction<'static, Sqlite>,
    topic: &str,
    watermark: u64,
    row: &NewRow,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO runtime_sync_stream_events
            (topic, watermark, doc_key, doc_version, payload, payload_hash,
             owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, inserted_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(topic)
    .bind(to_i64(watermark))
    .bind(&row.doc_key)
    .bind(to_i64(row.doc_version))
    .bind(&row.payload)
    .bind(&row.payload_hash)
    .bind(&row.owner.user_id)
    .bind(&row.owner.guest_scope)
    .bind(&row.owner.org_id)
    .bind(row.projected_at_ms)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn upsert_doc(
    tx: &mut Transaction<'static, Sqlite>,
    table: &str,
    doc_key: &str,
    doc_version: u64,
    payload: &str,
    payload_hash: &str,
    watermark: u64,
    owner: &DocOwner,
    projected_at_ms: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO {table}
            (doc_key, doc_version, payload, payload_hash, watermark,
             owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (doc_key) DO UPDATE SET
             doc_version = excluded.doc_version, payload = excluded.payload,
             payload_hash = excluded.payload_hash, watermark = excluded.watermark,
             owner_user_id = excluded.owner_user_id,
             owner_guest_scope = excluded.owner_guest_scope,
             owner_org_id = excluded.owner_org_id, projected_at_ms = excluded.projected_at_ms,
             updated_at_ms = excluded.updated_at_ms"
    ))
    .bind(doc_key)
    .bind(to_i64(doc_version))
    .bind(payload)
    .bind(payload_hash)
    .bind(to_i64(watermark))
    .bind(&owner.user_id)
    .bind(&owner.guest_scope)
    .bind(&owner.org_id)
    .bind(projected_at_ms)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn rebuild_missing(spec: &ProjectorSpec) -> StoreError {
    StoreError::RebuildState {
        projector: spec.name.to_owned(),
        message: "no rebuild in progress".into(),
    }
}

impl SqliteStore {
    pub fn new(pool: SqlitePool, write_lock: Arc<engine::journal::SqliteWriter>) -> Self {
        Self { pool, write_lock }
    }

    async fn write(&self) -> Result<WriteTx, StoreError> {
        let guard = self.write_lock.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _guard: guard })
    }

    pub(super) async fn register(
        &self,
        spec: &ProjectorSpec,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query(
            "INSERT INTO runtime_projection_checkpoints (projector, topic, projection_version, updated_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (projector) DO NOTHING",
        )
        .bind(spec.name)
        .bind(spec.topic)
        .bind(i64::from(spec.version))
        .bind(now_ms)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "INSERT INTO runtime_sync_topic_sequences (topic, updated_at_ms) VALUES ($1, $2)
             ON CONFLICT (topic) DO NOTHING",
        )
        .bind(spec.topic)
        .bind(now_ms)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    pub(super) async fn checkpoint(
        &self,
        projector: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM runtime_projection_checkpoints WHERE projector = $1"
        ))
        .bind(projector)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint).transpose()
    }

    pub(super) async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM runtime_projection_checkpoints ORDER BY projector"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint).collect()
    }

    pub(super) async fn try_acquire(
        &self,
        projector: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut w = self.write().await?;
        let row = sqlx::query(&format!(
            "UPDATE runtime_projection_checkpoints
                SET lease_owner = $2, lease_expires_at_ms = $3 + $4, updated_at_ms = $3
              WHERE projector = $1
                AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at_ms < $3)
          RETURNING {CHECKPOINT_COLUMNS}"
        ))
        .bind(projector)
        .bind(owner)
        .bind(now_ms)
        .bind(ttl_ms)
        .fetch_optional(&mut *w.tx)
        .await?;
        let checkpoint = row.as_ref().map(checkpoint).transpose()?;
        w.tx.commit().await?;
        Ok(checkpoint)
    }

    pub(super) async fn release(&self, projector: &str, owner: &str) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query(
            "UPDATE runtime_projection_checkpoints SET lease_owner = NULL, lease_expires_at_ms = 0
              WHERE projector = $1 AND lease_owner = $2",
        )
        .bind(projector)
        .bind(owner)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    pub(super) async fn load_docs(
        &self,
        spec: &ProjectorSpec,
        target: Target,
        keys: &[String],
    ) -> Result<Vec<DocRow>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        // Chunks keep each statement under SQLite's parameter limit.
        for chunk in keys.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {DOC_COLUMNS} FROM {} WHERE doc_key IN ({})",
                table(spec, target),
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(key);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(doc_row(&row)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn commit(&self, batch: BatchCommit<'_>) -> Result<Committed, StoreError> {
        let spec = batch.spec;
        let mut w = self.write().await?;
        let locked = lock_checkpoint(&mut w.tx, spec.name).await?;
        if locked.lease_owner.as_deref() != Some(batch.owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let stored = match batch.target {
            Target::Live => locked.cursor,
            Target::Rebuild => locked.rebuild_cursor.ok_or_else(|| rebuild_missing(spec))?,
        };
        if stored != batch.from {
            return Err(StoreError::CursorMoved(spec.name.to_owned()));
        }
        let mut committed = Committed::default();
        if batch.target == Target::Live && !batch.rows.is_empty() {
            let n = batch.rows.len() as u64;
            let first = allocate(&mut w.tx, spec.topic, n, batch.now_ms).await?;
            for (i, row) in batch.rows.iter().enumerate() {
                insert_row(&mut w.tx, spec.topic, first + i as u64, row, batch.now_ms).await?;
            }
            committed.first_watermark = Some(first);
            committed.head_watermark = first + n - 1;
        }
        let docs_table = table(spec, batch.target);
        for d in &batch.docs {
            let watermark = match (d.last_row, committed.first_watermark) {
                (Some(i), Some(first)) => first + i as u64,
                _ => 0,
            };
            upsert_doc(
                &mut w.tx,
                &docs_table,
                &d.doc_key,
                d.doc_version,
                &d.payload,
                &d.payload_hash,
                watermark,
                &d.owner,
                d.projected_at_ms,
                batch.now_ms,
            )
            .await?;
        }
        let sql = match batch.target {
            Target::Live => {
                "UPDATE runtime_projection_checkpoints
                    SET cursor_transaction = $2, cursor_position = $3,
                        events_projected = events_projected + $4,
                        lease_expires_at_ms = $5 + $6, updated_at_ms = $5
                  WHERE projector = $1"
            }
            Target::Rebuild => {
                "UPDATE runtime_projection_checkpoints
                    SET rebuild_cursor_transaction = $2, rebuild_cursor_position = $3,
                        rebuild_events = rebuild_events + $4,
                        lease_expires_at_ms = $5 + $6, updated_at_ms = $5
                  WHERE projector = $1"
            }
        };
        sqlx::query(sql)
            .bind(spec.name)
            .bind(to_i64(batch.to.transaction()))
            .bind(to_i64(batch.to.position()))
            .bind(to_i64(batch.events))
            .bind(batch.now_ms)
            .bind(batch.lease_ttl_ms)
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(committed)
    }

    pub(super) async fn request_rebuild(
        &self,
        projector: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let done = sqlx::query(
            "UPDATE runtime_projection_checkpoints SET rebuild_requested = 1, updated_at_ms = $2
              WHERE projector = $1",
        )
        .bind(projector)
        .bind(now_ms)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn begin_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let locked = lock_checkpoint(&mut w.tx, spec.name).await?;
        if locked.lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        sqlx::query(&format!("DELETE FROM {}", table(spec, Target::Rebuild)))
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "UPDATE runtime_projection_checkpoints
                SET rebuild_version = $2, rebuild_cursor_transaction = 0,
                    rebuild_cursor_position = 0, rebuild_events = 0,
                    rebuild_started_at_ms = $3, rebuild_requested = 0, updated_at_ms = $3
              WHERE projector = $1",
        )
        .bind(spec.name)
        .bind(i64::from(spec.version))
        .bind(now_ms)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    pub(super) async fn finish_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<Swapped, StoreError> {
        let mut w = self.write().await?;
        let locked = lock_checkpoint(&mut w.tx, spec.name).await?;
        if locked.lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let (Some(_), Some(version)) = (locked.rebuild_cursor, locked.rebuild_version) else {
            return Err(rebuild_missing(spec));
        };
        let epoch: i64 =
            sqlx::query_scalar("SELECT epoch FROM runtime_sync_topic_sequences WHERE topic = $1")
                .bind(spec.topic)
                .fetch_one(&mut *w.tx)
                .await?;
        let epoch = to_u64(epoch, "epoch")? + 1;
        let marker = allocate(&mut w.tx, spec.topic, 1, now_ms).await?;
        sqlx::query("DELETE FROM runtime_sync_stream_events WHERE topic = $1")
            .bind(spec.topic)
            .execute(&mut *w.tx)
            .await?;
        let payload = json!({"epoch": epoch, "projection_version": version, "reason": "rebuild"});
        insert_row(
            &mut w.tx,
            spec.topic,
            marker,
            &NewRow {
                doc_key: epoch_marker_key(spec.topic),
                doc_version: epoch,
                payload: payload.to_string(),
                payload_hash: aggregates::canonical::hash_canonical(&payload),
                owner: DocOwner::default(),
                projected_at_ms: now_ms,
            },
            now_ms,
        )
        .await?;
        let live = table(spec, Target::Live);
        let shadow = table(spec, Target::Rebuild);
        sqlx::query(&format!("DELETE FROM {live}"))
            .execute(&mut *w.tx)
            .await?;
        let docs = sqlx::query(&format!(
            "INSERT INTO {live}
                (doc_key, doc_version, payload, payload_hash, watermark,
                 owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms)
             SELECT doc_key, doc_version, payload, payload_hash, $1,
                    owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms
               FROM {shadow}"
        ))
        .bind(to_i64(marker))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        sqlx::query(&format!("DELETE FROM {shadow}"))
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "UPDATE runtime_sync_topic_sequences
                SET retention_floor = $2, epoch = $3, epoch_start = $2, updated_at_ms = $4
              WHERE topic = $1",
        )
        .bind(spec.topic)
        .bind(to_i64(marker))
        .bind(to_i64(epoch))
        .bind(now_ms)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "UPDATE runtime_projection_checkpoints
                SET cursor_transaction = rebuild_cursor_transaction,
                    cursor_position = rebuild_cursor_position,
                    events_projected = rebuild_events, projection_version = rebuild_version,
                    rebuild_version = NULL, rebuild_cursor_transaction = NULL,
                    rebuild_cursor_position = NULL, rebuild_events = 0,
                    rebuild_started_at_ms = NULL, last_rebuilt_at_ms = $2, updated_at_ms = $2
              WHERE projector = $1",
        )
        .bind(spec.name)
        .bind(now_ms)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(Swapped {
            epoch,
            epoch_start: marker,
            docs,
        })
    }

    pub(super) async fn repair_docs<F, Fut>(
        &self,
        spec: &ProjectorSpec,
        now_ms: i64,
        only_existing: bool,
        compute: F,
    ) -> Result<Vec<(String, Repaired)>, StoreError>
    where
        F: FnOnce(GlobalCursor) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Vec<DocWrite>, StoreError>> + Send,
    {
        let mut w = self.write().await?;
        let locked = lock_checkpoint(&mut w.tx, spec.name).await?;
        if locked.rebuild_cursor.is_some() {
            return Err(StoreError::RebuildState {
                projector: spec.name.to_owned(),
                message: "a full rebuild is in progress; repair after it finished".into(),
            });
        }
        let computed = compute(locked.cursor).await?;
        let live = table(spec, Target::Live);
        let mut outcomes = Vec::with_capacity(computed.len());
        for doc in computed {
            let stored = sqlx::query(&format!(
                "SELECT {DOC_COLUMNS} FROM {live} WHERE doc_key = $1"
            ))
            .bind(&doc.doc_key)
            .fetch_optional(&mut *w.tx)
            .await?
            .as_ref()
            .map(doc_row)
            .transpose()?;
            match &stored {
                Some(stored)
                    if stored.payload_hash == doc.payload_hash && stored.owner == doc.owner =>
                {
                    outcomes.push((doc.doc_key, Repaired::Unchanged));
                    continue;
                }
                None if only_existing => continue,
                _ => {}
            }
            let version = stored.as_ref().map_or(1, |s| s.doc_version + 1);
            let watermark = allocate(&mut w.tx, spec.topic, 1, now_ms).await?;
            let row = NewRow {
                doc_key: doc.doc_key.clone(),
                doc_version: version,
                payload: doc.payload.clone(),
                payload_hash: doc.payload_hash.clone(),
                owner: doc.owner.clone(),
                projected_at_ms: doc.projected_at_ms,
            };
            insert_row(&mut w.tx, spec.topic, watermark, &row, now_ms).await?;
            upsert_doc(
                &mut w.tx,
                &live,
                &row.doc_key,
                version,
                &row.payload,
                &row.payload_hash,
                watermark,
                &row.owner,
                row.projected_at_ms,
                now_ms,
            )
            .await?;
            outcomes.push((
                doc.doc_key,
                Repaired::Written {
                    doc_version: version,
                    watermark,
                },
            ));
        }
        w.tx.commit().await?;
        Ok(outcomes)
    }

    pub(super) async fn topic_states(
        &self,
        topics: &[&str],
    ) -> Result<Vec<TopicState>, StoreError> {
        let mut out = Vec::with_capacity(topics.len());
        for topic in topics {
            let row = sqlx::query(
                "SELECT head_watermark, retention_floor, epoch, epoch_start
                   FROM runtime_sync_topic_sequences WHERE topic = $1",
            )
            .bind(topic)
            .fetch_optional(&self.pool)
            .await?;
            out.push(match row {
                Some(row) => topic_state(topic, &row)?,
                None => TopicState {
                    topic: (*topic).to_owned(),
                    epoch: 1,
                    ..TopicState::default()
                },
            });
        }
        Ok(out)
    }

    pub(super) async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, ReadError> {
        let (any, user, guest, org) = filter_binds(filter);
        let mut tx = self.pool.begin().await?;
        let state = sqlx::query(
            "SELECT head_watermark, retention_floor, epoch, epoch_start
               FROM runtime_sync_topic_sequences WHERE topic = $1",
        )
        .bind(topic)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Ok(Vec::new());
        };
        let state = topic_state(topic, &state)?;
        if after < state.retention_floor {
            return Err(ReadError::Stale { after, state });
        }
        let rows = sqlx::query(&format!(
            "SELECT x.watermark, x.doc_key, x.doc_version, x.payload, x.payload_hash,
                    x.owner_user_id, x.owner_guest_scope, x.owner_org_id, x.projected_at_ms
               FROM runtime_sync_stream_events x
              WHERE x.topic = $1 AND x.watermark > $2 AND {OWNER_CLAUSE}
              ORDER BY x.watermark
              LIMIT $7"
        ))
        .bind(topic)
        .bind(to_i64(after))
        .bind(any)
        .bind(user)
        .bind(guest)
        .bind(org)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(StreamRow {
                topic: topic.to_owned(),
                watermark: to_u64(row.try_get("watermark")?, "watermark")?,
                doc_key: row.try_get("doc_key")?,
                doc_version: to_u64(row.try_get("doc_version")?, "doc_version")?,
                payload: row.try_get("payload")?,
                payload_hash: row.try_get("payload_hash")?,
                owner: owner(row)?,
                projected_at_ms: row.try_get("projected_at_ms")?,
            });
        }
        Ok(out)
    }

    pub(super) async fn hydrate(
        &self,
        spec: &ProjectorSpec,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        filter: &OwnerFilter,
    ) -> Result<Hydration, ReadError> {
        let (any, user, guest, org) = filter_binds(filter);
        let mut tx = self.pool.begin().await?;
        let head: Option<i64> = sqlx::query_scalar(
            "SELECT head_watermark FROM runtime_sync_topic_sequences WHERE topic = $1",
        )
        .bind(spec.topic)
        .fetch_optional(&mut *tx)
        .await?;
        // Keys compare in SQLite's default BINARY collation: byte order, as PostgreSQL's "C".
        let rows = sqlx::query(&format!(
            "SELECT {DOC_COLUMNS} FROM {} x
              WHERE ($1 IS NULL OR x.doc_key = $1) AND $2 = $2 AND {OWNER_CLAUSE}
                AND ($7 IS NULL OR x.doc_key > $7)
              ORDER BY x.doc_key
              LIMIT $8",
            table(spec, Target::Live)
        ))
        .bind(doc_key)
        .bind(0_i64)
        .bind(any)
        .bind(user)
        .bind(guest)
        .bind(org)
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let docs = rows.iter().map(doc_row).collect::<Result<_, _>>()?;
        let (docs, next_after) = page.finish(docs, |d| d.doc_key.as_str());
        Ok(Hydration {
            topic: spec.topic.to_owned(),
            watermark: to_u64(head.unwrap_or(0), "watermark")?,
            docs,
            next_after,
        })
    }

    pub(super) async fn prune(
        &self,
        spec: &ProjectorSpec,
        cutoff_ms: i64,
        max_rows: u64,
        now_ms: i64,
    ) -> Result<Pruned, StoreError> {
        let mut w = self.write().await?;
        let floor: Option<i64> = sqlx::query_scalar(
            "SELECT retention_floor FROM runtime_sync_topic_sequences WHERE topic = $1",
        )
        .bind(spec.topic)
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(floor) = floor else {
            return Ok(Pruned::default());
        };
        let through: Option<i64> = sqlx::query_scalar(
            "SELECT max(watermark) FROM (
                 SELECT watermark, inserted_at_ms FROM runtime_sync_stream_events
                  WHERE topic = $1 AND watermark > $2 ORDER BY watermark LIMIT $3)
              WHERE inserted_at_ms < $4",
        )
        .bind(spec.topic)
        .bind(floor)
        .bind(to_i64(max_rows))
        .bind(cutoff_ms)
        .fetch_one(&mut *w.tx)
        .await?;
        let mut pruned = Pruned {
            retention_floor: to_u64(floor, "watermark")?,
            ..Pruned::default()
        };
        if let Some(through) = through {
            pruned.rows = sqlx::query(
                "DELETE FROM runtime_sync_stream_events WHERE topic = $1 AND watermark <= $2",
            )
            .bind(spec.topic)
            .bind(through)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
            sqlx::query(
                "UPDATE runtime_sync_topic_sequences SET retention_floor = $2, updated_at_ms = $3
                  WHERE topic = $1",
            )
            .bind(spec.topic)
            .bind(through)
            .bind(now_ms)
            .execute(&mut *w.tx)
            .await?;
            pruned.retention_floor = to_u64(through, "watermark")?;
        }
        if spec.docs_are_events {
            let live = table(spec, Target::Live);
            pruned.docs = sqlx::query(&format!(
                "DELETE FROM {live} WHERE doc_key IN (
                     SELECT doc_key FROM {live} WHERE updated_at_ms < $1 LIMIT $2)"
            ))
            .bind(cutoff_ms)
            .bind(to_i64(max_rows))
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        }
        w.tx.commit().await?;
        Ok(pruned)
    }

    pub(super) async fn all_docs(&self, spec: &ProjectorSpec) -> Result<Vec<DocRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DOC_COLUMNS} FROM {} ORDER BY doc_key",
            table(spec, Target::Live)
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(doc_row).collect()
    }
}

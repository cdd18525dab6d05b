//! The projection store in PostgreSQL (`runtime.*` tables). Batches use `unnest` array binds so a
//! batch of any size is a fixed number of statements.

use engine::journal::GlobalCursor;
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{
    epoch_marker_key, to_i64, to_u64, BatchCommit, Checkpoint, Committed, DocRow, DocWrite,
    HydratePage, Hydration, ProjectorSpec, Pruned, ReadError, RebuildState, Repaired, StoreError,
    StreamRow, Swapped, Target, TopicState,
};
use crate::model::{DocOwner, OwnerFilter};

const CHECKPOINT_COLUMNS: &str = "projector, topic, projection_version, cursor_transaction, \
    cursor_position, events_projected, lease_owner, lease_expires_at_ms, rebuild_requested, \
    rebuild_version, rebuild_cursor_transaction, rebuild_cursor_position, rebuild_events, \
    rebuild_started_at_ms, last_rebuilt_at_ms, updated_at_ms";

const DOC_COLUMNS: &str =
    "doc_key, doc_version, payload::text AS payload, payload_hash, watermark, \
    owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms";

/// The PostgreSQL projection store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn table(spec: &ProjectorSpec, target: Target) -> String {
    match target {
        Target::Live => format!("runtime.{}", spec.table),
        Target::Rebuild => format!("runtime.{}_rebuild", spec.table),
    }
}

fn checkpoint(row: &PgRow) -> Result<Checkpoint, StoreError> {
    let rebuild_version: Option<i32> = row.try_get("rebuild_version")?;
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
        projection_version: u32::try_from(row.try_get::<i32, _>("projection_version")?)
            .unwrap_or_default(),
        cursor: GlobalCursor::new(
            to_u64(row.try_get("cursor_transaction")?, "cursor")?,
            to_u64(row.try_get("cursor_position")?, "cursor")?,
        ),
        events_projected: to_u64(row.try_get("events_projected")?, "count")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at_ms: row.try_get("lease_expires_at_ms")?,
        rebuild_requested: row.try_get("rebuild_requested")?,
        rebuild,
        last_rebuilt_at_ms: row.try_get("last_rebuilt_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn owner(row: &PgRow) -> Result<DocOwner, sqlx::Error> {
    Ok(DocOwner {
        user_id: row.try_get("owner_user_id")?,
        guest_scope: row.try_get("owner_guest_scope")?,
        org_id: row.try_get("owner_org_id")?,
    })
}

fn doc_row(row: &PgRow) -> Result<DocRow, StoreError> {
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

fn topic_state(topic: &str, row: &PgRow) -> Result<TopicState, StoreError> {
    Ok(TopicState {
        topic: topic.to_owned(),
        head_watermark: to_u64(row.try_get("head_watermark")?, "watermark")?,
        retention_floor: to_u64(row.try_get("retention_floor")?, "watermark")?,
        epoch: to_u64(row.try_get("epoch")?, "epoch")?,
        epoch_start: to_u64(row.try_get("epoch_start")?, "watermark")?,
    })
}

/// `(is_any, user, guest, org)` binds for the owner clause.
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

/// The owner clause over alias `x`, with binds `$a` (any), `$a+1` user, `$a+2` guest, `$a+3` org.
fn owner_clause(alias: &str, first: usize) -> String {
    let (any, user, guest, org) = (first, first + 1, first + 2, first + 3);
    format!(
        "(${any}::bool OR (({alias}.owner_user_id = ${user}::text OR {alias}.owner_guest_scope = ${guest}::text) \
          AND {alias}.owner_org_id IS NOT DISTINCT FROM ${org}::text))"
    )
}

/// Locks the checkpoint row; `(lease_owner, cursor, rebuild cursor)`.
async fn lock_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    projector: &str,
) -> Result<
    (
        Option<String>,
        GlobalCursor,
        Option<GlobalCursor>,
        Option<i32>,
    ),
    StoreError,
> {
    let row = sqlx::query(
        "SELECT lease_owner, cursor_transaction, cursor_position, rebuild_version,
                rebuild_cursor_transaction, rebuild_cursor_position
           FROM runtime.projection_checkpoints WHERE projector = $1 FOR UPDATE",
    )
    .bind(projector)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::UnknownProjector(projector.to_owned()))?;
    let cursor = GlobalCursor::new(
        to_u64(row.try_get("cursor_transaction")?, "cursor")?,
        to_u64(row.try_get("cursor_position")?, "cursor")?,
    );
    let version: Option<i32> = row.try_get("rebuild_version")?;
    let rebuild = match version {
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
    Ok((row.try_get("lease_owner")?, cursor, rebuild, version))
}

/// Allocates `n` watermarks of `topic` (under its row lock); returns the first.
async fn allocate(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    n: u64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let head: i64 = sqlx::query_scalar(
        "UPDATE runtime.sync_topic_sequences
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

struct RowArrays {
    watermarks: Vec<i64>,
    keys: Vec<String>,
    versions: Vec<i64>,
    payloads: Vec<String>,
    hashes: Vec<String>,
    users: Vec<Option<String>>,
    guests: Vec<Option<String>>,
    orgs: Vec<Option<String>>,
    projected: Vec<i64>,
}

impl RowArrays {
    fn with_capacity(n: usize) -> Self {
        Self {
            watermarks: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            users: Vec::with_capacity(n),
            guests: Vec::with_capacity(n),
            orgs: Vec::with_capacity(n),
            projected: Vec::with_capacity(n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        watermark: u64,
        key: &str,
        version: u64,
        payload: &str,
        hash: &str,
        owner: &DocOwner,
        projected_at_ms: i64,
    ) {
        self.watermarks.push(to_i64(watermark));
        self.keys.push(key.to_owned());
        self.versions.push(to_i64(version));
        self.payloads.push(payload.to_owned());
        self.hashes.push(hash.to_owned());
        self.users.push(owner.user_id.clone());
        self.guests.push(owner.guest_scope.clone());
        self.orgs.push(owner.org_id.clone());
        self.projected.push(projected_at_ms);
    }
}

async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    rows: &RowArrays,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO runtime.sync_stream_events
            (topic, watermark, doc_key, doc_version, payload, payload_hash,
             owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, inserted_at_ms)
         SELECT $1, r.w, r.k, r.v, r.p::json, r.h, r.u, r.g, r.o, r.t, $2
           FROM unnest($3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                       $8::text[], $9::text[], $10::text[], $11::bigint[])
                AS r(w, k, v, p, h, u, g, o, t)",
    )
    .bind(topic)
    .bind(now_ms)
    .bind(&rows.watermarks)
    .bind(&rows.keys)
    .bind(&rows.versions)
    .bind(&rows.payloads)
    .bind(&rows.hashes)
    .bind(&rows.users)
    .bind(&rows.guests)
    .bind(&rows.orgs)
    .bind(&rows.projected)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_docs(
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
    docs: &RowArrays,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO {table}
            (doc_key, doc_version, payload, payload_hash, watermark,
             owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms)
         SELECT d.k, d.v, d.p::json, d.h, d.w, d.u, d.g, d.o, d.t, $1
           FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::bigint[])
                AS d(w, k, v, p, h, u, g, o, t)
         ON CONFLICT (doc_key) DO UPDATE SET
             doc_version = EXCLUDED.doc_version, payload = EXCLUDED.payload,
             payload_hash = EXCLUDED.payload_hash, watermark = EXCLUDED.watermark,
             owner_user_id = EXCLUDED.owner_user_id,
             owner_guest_scope = EXCLUDED.owner_guest_scope,
             owner_org_id = EXCLUDED.owner_org_id, projected_at_ms = EXCLUDED.projected_at_ms,
             updated_at_ms = EXCLUDED.updated_at_ms"
    ))
    .bind(now_ms)
    .bind(&docs.watermarks)
    .bind(&docs.keys)
    .bind(&docs.versions)
    .bind(&docs.payloads)
    .bind(&docs.hashes)
    .bind(&docs.users)
    .bind(&docs.guests)
    .bind(&docs.orgs)
    .bind(&docs.projected)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn doc_arrays(docs: &[DocWrite], first_watermark: Option<u64>) -> RowArrays {
    let mut arrays = RowArrays::with_capacity(docs.len());
    for d in docs {
        let watermark = match (d.last_row, first_watermark) {
            (Some(i), Some(first)) => first + i as u64,
            _ => 0,
        };
        arrays.push(
            watermark,
            &d.doc_key,
            d.doc_version,
            &d.payload,
            &d.payload_hash,
            &d.owner,
            d.projected_at_ms,
        );
    }
    arrays
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) async fn register(
        &self,
        spec: &ProjectorSpec,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runtime.projection_checkpoints (projector, topic, projection_version, updated_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (projector) DO NOTHING",
        )
        .bind(spec.name)
        .bind(spec.topic)
        .bind(i32::try_from(spec.version).unwrap_or(i32::MAX))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO runtime.sync_topic_sequences (topic, updated_at_ms) VALUES ($1, $2)
             ON CONFLICT (topic) DO NOTHING",
        )
        .bind(spec.topic)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn checkpoint(
        &self,
        projector: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM runtime.projection_checkpoints WHERE projector = $1"
        ))
        .bind(projector)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint).transpose()
    }

    pub(super) async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM runtime.projection_checkpoints ORDER BY projector"
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
        let row = sqlx::query(&format!(
            "UPDATE runtime.projection_checkpoints
                SET lease_owner = $2, lease_expires_at_ms = $3 + $4, updated_at_ms = $3
              WHERE projector = $1
                AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at_ms < $3)
          RETURNING {CHECKPOINT_COLUMNS}"
        ))
        .bind(projector)
        .bind(owner)
        .bind(now_ms)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint).transpose()
    }

    pub(super) async fn release(&self, projector: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runtime.projection_checkpoints SET lease_owner = NULL, lease_expires_at_ms = 0
              WHERE projector = $1 AND lease_owner = $2",
        )
        .bind(projector)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn load_docs(
        &self,
        spec: &ProjectorSpec,
        target: Target,
        keys: &[String],
    ) -> Result<Vec<DocRow>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {DOC_COLUMNS} FROM {} WHERE doc_key = ANY($1)",
            table(spec, target)
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(doc_row).collect()
    }

    pub(super) async fn commit(&self, batch: BatchCommit<'_>) -> Result<Committed, StoreError> {
        let spec = batch.spec;
        let mut tx = self.pool.begin().await?;
        let (lease_owner, cursor, rebuild_cursor, _) = lock_checkpoint(&mut tx, spec.name).await?;
        if lease_owner.as_deref() != Some(batch.owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let stored = match batch.target {
            Target::Live => cursor,
            Target::Rebuild => rebuild_cursor.ok_or_else(|| StoreError::RebuildState {
                projector: spec.name.to_owned(),
                message: "no rebuild in progress".into(),
            })?,
        };
        if stored != batch.from {
            return Err(StoreError::CursorMoved(spec.name.to_owned()));
        }
        let mut committed = Committed::default();
        if batch.target == Target::Live && !batch.rows.is_empty() {
            let n = batch.rows.len() as u64;
            let first = allocate(&mut tx, spec.topic, n, batch.now_ms).await?;
            let mut rows = RowArrays::with_capacity(batch.rows.len());
            for (i, r) in batch.rows.iter().enumerate() {
                rows.push(
                    first + i as u64,
                    &r.doc_key,
                    r.doc_version,
                    &r.payload,
                    &r.payload_hash,
                    &r.owner,
                    r.projected_at_ms,
                );
            }
            insert_rows(&mut tx, spec.topic, &rows, batch.now_ms).await?;
            committed.first_watermark = Some(first);
            committed.head_watermark = first + n - 1;
        }
        if !batch.docs.is_empty() {
            let docs = doc_arrays(&batch.docs, committed.first_watermark);
            upsert_docs(&mut tx, &table(spec, batch.target), &docs, batch.now_ms).await?;
        }
        let sql = match batch.target {
            Target::Live => {
                "UPDATE runtime.projection_checkpoints
                    SET cursor_transaction = $2, cursor_position = $3,
                        events_projected = events_projected + $4,
                        lease_expires_at_ms = $5 + $6, updated_at_ms = $5
                  WHERE projector = $1"
            }
            Target::Rebuild => {
                "UPDATE runtime.projection_checkpoints
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
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(committed)
    }

    pub(super) async fn request_rebuild(
        &self,
        projector: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runtime.projection_checkpoints SET rebuild_requested = true, updated_at_ms = $2
              WHERE projector = $1",
        )
        .bind(projector)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn begin_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (lease_owner, ..) = lock_checkpoint(&mut tx, spec.name).await?;
        if lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        sqlx::query(&format!("DELETE FROM {}", table(spec, Target::Rebuild)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE runtime.projection_checkpoints
                SET rebuild_version = $2, rebuild_cursor_transaction = 0,
                    rebuild_cursor_position = 0, rebuild_events = 0,
                    rebuild_started_at_ms = $3, rebuild_requested = false, updated_at_ms = $3
              WHERE projector = $1",
        )
        .bind(spec.name)
        .bind(i32::try_from(spec.version).unwrap_or(i32::MAX))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn finish_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<Swapped, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (lease_owner, _, rebuild_cursor, version) = lock_checkpoint(&mut tx, spec.name).await?;
        if lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let (Some(_), Some(version)) = (rebuild_cursor, version) else {
            return Err(StoreError::RebuildState {
                projector: spec.name.to_owned(),
                message: "no rebuild in progress".into(),
            });
        };
        let epoch: i64 = sqlx::query_scalar(
            "SELECT epoch FROM runtime.sync_topic_sequences WHERE topic = $1 FOR UPDATE",
        )
        .bind(spec.topic)
        .fetch_one(&mut *tx)
        .await?;
        let epoch = to_u64(epoch, "epoch")? + 1;
        let marker = allocate(&mut tx, spec.topic, 1, now_ms).await?;
        sqlx::query("DELETE FROM runtime.sync_stream_events WHERE topic = $1")
            .bind(spec.topic)
            .execute(&mut *tx)
            .await?;
        let payload = json!({"epoch": epoch, "projection_version": version, "reason": "rebuild"});
        let mut rows = RowArrays::with_capacity(1);
        rows.push(
            marker,
            &epoch_marker_key(spec.topic),
            epoch,
            &payload.to_string(),
            &aggregates::canonical::hash_canonical(&payload),
            &DocOwner::default(),
            now_ms,
        );
        insert_rows(&mut tx, spec.topic, &rows, now_ms).await?;
        let live = table(spec, Target::Live);
        let shadow = table(spec, Target::Rebuild);
        sqlx::query(&format!("DELETE FROM {live}"))
            .execute(&mut *tx)
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
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(&format!("DELETE FROM {shadow}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE runtime.sync_topic_sequences
                SET retention_floor = $2, epoch = $3, epoch_start = $2, updated_at_ms = $4
              WHERE topic = $1",
        )
        .bind(spec.topic)
        .bind(to_i64(marker))
        .bind(to_i64(epoch))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runtime.projection_checkpoints
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let mut tx = self.pool.begin().await?;
        let (_, cursor, rebuild, _) = lock_checkpoint(&mut tx, spec.name).await?;
        if rebuild.is_some() {
            return Err(StoreError::RebuildState {
                projector: spec.name.to_owned(),
                message: "a full rebuild is in progress; repair after it finished".into(),
            });
        }
        let computed = compute(cursor).await?;
        let live = table(spec, Target::Live);
        let mut outcomes = Vec::with_capacity(computed.len());
        for doc in computed {
            let stored = sqlx::query(&format!(
                "SELECT {DOC_COLUMNS} FROM {live} WHERE doc_key = $1 FOR UPDATE"
            ))
            .bind(&doc.doc_key)
            .fetch_optional(&mut *tx)
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
            let watermark = allocate(&mut tx, spec.topic, 1, now_ms).await?;
            let mut rows = RowArrays::with_capacity(1);
            rows.push(
                watermark,
                &doc.doc_key,
                version,
                &doc.payload,
                &doc.payload_hash,
                &doc.owner,
                doc.projected_at_ms,
            );
            insert_rows(&mut tx, spec.topic, &rows, now_ms).await?;
            upsert_docs(&mut tx, &live, &rows, now_ms).await?;
            outcomes.push((
                doc.doc_key,
                Repaired::Written {
                    doc_version: version,
                    watermark,
                },
            ));
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    pub(super) async fn topic_states(
        &self,
        topics: &[&str],
    ) -> Result<Vec<TopicState>, StoreError> {
        let names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let rows = sqlx::query(
            "SELECT topic, head_watermark, retention_floor, epoch, epoch_start
               FROM runtime.sync_topic_sequences WHERE topic = ANY($1)",
        )
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashMap::new();
        for row in &rows {
            let topic: String = row.try_get("topic")?;
            let state = topic_state(&topic, row)?;
            found.insert(topic, state);
        }
        Ok(topics
            .iter()
            .map(|t| {
                found.remove(*t).unwrap_or_else(|| TopicState {
                    topic: (*t).to_owned(),
                    epoch: 1,
                    ..TopicState::default()
                })
            })
            .collect())
    }

    pub(super) async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, ReadError> {
        let (any, user, guest, org) = filter_binds(filter);
        let rows = sqlx::query(&format!(
            "SELECT t.head_watermark, t.retention_floor, t.epoch, t.epoch_start,
                    s.watermark, s.doc_key, s.doc_version, s.payload, s.payload_hash,
                    s.owner_user_id, s.owner_guest_scope, s.owner_org_id, s.projected_at_ms
               FROM runtime.sync_topic_sequences t
               LEFT JOIN LATERAL (
                    SELECT x.watermark, x.doc_key, x.doc_version, x.payload::text AS payload,
                           x.payload_hash, x.owner_user_id, x.owner_guest_scope,
                           x.owner_org_id, x.projected_at_ms
                      FROM runtime.sync_stream_events x
                     WHERE x.topic = t.topic AND x.watermark > $2 AND $2 >= t.retention_floor
                       AND {}
                     ORDER BY x.watermark
                     LIMIT $3) s ON true
              WHERE t.topic = $1
              ORDER BY s.watermark",
            owner_clause("x", 4)
        ))
        .bind(topic)
        .bind(to_i64(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(any)
        .bind(user)
        .bind(guest)
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let state = topic_state(topic, first)?;
        if after < state.retention_floor {
            return Err(ReadError::Stale { after, state });
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(watermark) = row.try_get::<Option<i64>, _>("watermark")? else {
                continue;
            };
            out.push(StreamRow {
                topic: topic.to_owned(),
                watermark: to_u64(watermark, "watermark")?,
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
        let rows = sqlx::query(&format!(
            "SELECT coalesce(t.head_watermark, 0) AS head_watermark,
                    d.doc_key, d.doc_version, d.payload, d.payload_hash, d.watermark,
                    d.owner_user_id, d.owner_guest_scope, d.owner_org_id, d.projected_at_ms
               FROM (SELECT $1::text AS topic) q
               LEFT JOIN runtime.sync_topic_sequences t ON t.topic = q.topic
               LEFT JOIN LATERAL (
                    SELECT x.doc_key, x.doc_version, x.payload::text AS payload, x.payload_hash,
                           x.watermark, x.owner_user_id, x.owner_guest_scope, x.owner_org_id,
                           x.projected_at_ms
                      FROM {} x
                     WHERE ($2::text IS NULL OR x.doc_key = $2::text) AND {}
                       AND ($7::text IS NULL OR x.doc_key COLLATE \"C\" > $7::text)
                     ORDER BY x.doc_key COLLATE \"C\"
                     LIMIT $8) d ON true
              ORDER BY d.doc_key COLLATE \"C\"",
            table(spec, Target::Live),
            owner_clause("x", 3)
        ))
        .bind(spec.topic)
        .bind(doc_key)
        .bind(any)
        .bind(user)
        .bind(guest)
        .bind(org)
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        let watermark = match rows.first() {
            Some(row) => to_u64(row.try_get("head_watermark")?, "watermark")?,
            None => 0,
        };
        let mut docs = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<String>, _>("doc_key")?.is_some() {
                docs.push(doc_row(row)?);
            }
        }
        let (docs, next_after) = page.finish(docs, |d| d.doc_key.as_str());
        Ok(Hydration {
            topic: spec.topic.to_owned(),
            watermark,
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
        let mut tx = self.pool.begin().await?;
        let floor: Option<i64> = sqlx::query_scalar(
            "SELECT retention_floor FROM runtime.sync_topic_sequences WHERE topic = $1 FOR UPDATE",
        )
        .bind(spec.topic)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(floor) = floor else {
            return Ok(Pruned::default());
        };
        let through: Option<i64> = sqlx::query_scalar(
            "SELECT max(watermark) FROM (
                 SELECT watermark, inserted_at_ms FROM runtime.sync_stream_events
                  WHERE topic = $1 AND watermark > $2 ORDER BY watermark LIMIT $3) q
              WHERE inserted_at_ms < $4",
        )
        .bind(spec.topic)
        .bind(floor)
        .bind(to_i64(max_rows))
        .bind(cutoff_ms)
        .fetch_one(&mut *tx)
        .await?;
        let mut pruned = Pruned {
            retention_floor: to_u64(floor, "watermark")?,
            ..Pruned::default()
        };
        if let Some(through) = through {
            pruned.rows = sqlx::query(
                "DELETE FROM runtime.sync_stream_events WHERE topic = $1 AND watermark <= $2",
            )
            .bind(spec.topic)
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "UPDATE runtime.sync_topic_sequences SET retention_floor = $2, updated_at_ms = $3
                  WHERE topic = $1",
            )
            .bind(spec.topic)
            .bind(through)
            .bind(now_ms)
            .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(pruned)
    }

    pub(super) async fn all_docs(&self, spec: &ProjectorSpec) -> Result<Vec<DocRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DOC_COLUMNS} FROM {} ORDER BY doc_key COLLATE \"C\"",
            table(spec, Target::Live)
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(doc_row).collect()
    }
}

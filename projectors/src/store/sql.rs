//! The projection store's SQL, written once for both backends: every statement, transaction and
//! row decoder behind [`SyncStore`](super::SyncStore), generic over the [`Dialect`] that spells
//! the few differences between PostgreSQL and SQLite.
//!
//! Writes run in one write transaction each ([`Dialect::BEGIN_WRITE`]; on SQLite under the
//! process-wide writer lock too, so writers queue in-process instead of hitting `SQLITE_BUSY`).
//! Reads that must see one snapshot (a topic's floor with its rows, its head with its documents)
//! are single statements, which both databases run against one snapshot.

use std::sync::Arc;

use engine::journal::GlobalCursor;
use serde_json::json;
use sqlx::{Pool, Transaction};
use tokio::sync::OwnedMutexGuard;

use super::dialect::{Arg, Columns, Dialect, Rows};
use super::{
    epoch_marker_key, to_i64, BatchCommit, Checkpoint, Committed, DocRow, DocWrite, HydratePage,
    Hydration, ProjectorSpec, Pruned, ReadError, RebuildState, Repaired, StoreError, StreamRow,
    Swapped, Target, TopicState,
};
use crate::model::{DocOwner, OwnerFilter};

const CHECKPOINT_COLUMNS: &str = "projector, topic, projection_version, cursor_transaction, \
    cursor_position, events_projected, lease_owner, lease_expires_at_ms, rebuild_requested, \
    rebuild_version, rebuild_cursor_transaction, rebuild_cursor_position, rebuild_events, \
    rebuild_started_at_ms, last_rebuilt_at_ms, updated_at_ms";

/// The columns a document table is written with, in the order its inserts list them.
const DOC_TABLE_COLUMNS: &str = "doc_key, doc_version, payload, payload_hash, watermark, \
    owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms";

/// The columns of a stream row or a document (the payload as its JSON text).
const ROW_COLUMNS: &str = "doc_key, doc_version, CAST(payload AS TEXT) AS payload, payload_hash, \
    watermark, owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms";

/// The projection store of one database.
pub(super) struct SqlStore<D: Dialect> {
    pool: Pool<D>,
    /// SQLite's process-wide writer lock (`None` on PostgreSQL, whose row locks serialise).
    write_lock: Option<Arc<engine::journal::SqliteWriter>>,
    checkpoints: String,
    topics: String,
    stream: String,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            write_lock: self.write_lock.clone(),
            checkpoints: self.checkpoints.clone(),
            topics: self.topics.clone(),
            stream: self.stream.clone(),
        }
    }
}

/// A write transaction, with the writer lock held where there is one. The transaction is
/// declared first so it is dropped (rolled back) before the lock is released.
struct WriteTx<D: Dialect> {
    tx: Transaction<'static, D>,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl<D: Dialect> WriteTx<D> {
    async fn fetch(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<D::Row>, sqlx::Error> {
        D::fetch(&mut self.tx, sql, args).await
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        D::execute(&mut self.tx, sql, args).await
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}

/// What a write needs of the checkpoint row it locks (and no more: it is read under the lock).
const LOCKED_COLUMNS: &str = "lease_owner, cursor_transaction, cursor_position, \
    rebuild_version, rebuild_cursor_transaction, rebuild_cursor_position";

/// A locked checkpoint row ([`LOCKED_COLUMNS`]).
struct Locked {
    lease_owner: Option<String>,
    cursor: GlobalCursor,
    rebuild: Option<Rebuilding>,
}

/// A full rebuild in progress: the version it builds and its cursor.
struct Rebuilding {
    version: u32,
    cursor: GlobalCursor,
}

fn rebuilding(row: &impl Columns) -> Result<Option<Rebuilding>, StoreError> {
    let Some(version) = row.opt_int32("rebuild_version")? else {
        return Ok(None);
    };
    let part = |column: &str| -> Result<u64, StoreError> {
        super::to_u64(row.opt_int(column)?.unwrap_or(0), column)
    };
    Ok(Some(Rebuilding {
        version: u32::try_from(version).unwrap_or_default(),
        cursor: GlobalCursor::new(
            part("rebuild_cursor_transaction")?,
            part("rebuild_cursor_position")?,
        ),
    }))
}

fn cursor(row: &impl Columns) -> Result<GlobalCursor, StoreError> {
    Ok(GlobalCursor::new(
        row.uint("cursor_transaction")?,
        row.uint("cursor_position")?,
    ))
}

fn locked(row: &impl Columns) -> Result<Locked, StoreError> {
    Ok(Locked {
        lease_owner: row.opt_text("lease_owner")?,
        cursor: cursor(row)?,
        rebuild: rebuilding(row)?,
    })
}

fn checkpoint(row: &impl Columns) -> Result<Checkpoint, StoreError> {
    let rebuild = match rebuilding(row)? {
        Some(Rebuilding { version, cursor }) => Some(RebuildState {
            version,
            cursor,
            events: row.uint("rebuild_events")?,
            started_at_ms: row.opt_int("rebuild_started_at_ms")?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Checkpoint {
        projector: row.text("projector")?,
        topic: row.text("topic")?,
        projection_version: u32::try_from(row.int32("projection_version")?).unwrap_or_default(),
        cursor: cursor(row)?,
        events_projected: row.uint("events_projected")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at_ms: row.int("lease_expires_at_ms")?,
        rebuild_requested: row.flag("rebuild_requested")?,
        rebuild,
        last_rebuilt_at_ms: row.opt_int("last_rebuilt_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

fn owner(row: &impl Columns) -> Result<DocOwner, sqlx::Error> {
    Ok(DocOwner {
        user_id: row.opt_text("owner_user_id")?,
        guest_scope: row.opt_text("owner_guest_scope")?,
        org_id: row.opt_text("owner_org_id")?,
    })
}

fn doc_row(row: &impl Columns) -> Result<DocRow, StoreError> {
    Ok(DocRow {
        doc_key: row.text("doc_key")?,
        doc_version: row.uint("doc_version")?,
        payload: row.text("payload")?,
        payload_hash: row.text("payload_hash")?,
        watermark: row.uint("watermark")?,
        owner: owner(row)?,
        projected_at_ms: row.int("projected_at_ms")?,
    })
}

fn stream_row(topic: &str, row: &impl Columns) -> Result<StreamRow, StoreError> {
    let doc = doc_row(row)?;
    Ok(StreamRow {
        topic: topic.to_owned(),
        watermark: doc.watermark,
        doc_key: doc.doc_key,
        doc_version: doc.doc_version,
        payload: doc.payload,
        payload_hash: doc.payload_hash,
        owner: doc.owner,
        projected_at_ms: doc.projected_at_ms,
    })
}

fn topic_state(topic: &str, row: &impl Columns) -> Result<TopicState, StoreError> {
    Ok(TopicState {
        topic: topic.to_owned(),
        head_watermark: row.uint("head_watermark")?,
        retention_floor: row.uint("retention_floor")?,
        epoch: row.uint("epoch")?,
        epoch_start: row.uint("epoch_start")?,
    })
}

/// The owner rule over alias `x`, with `$n` (any), `$n+1` (user), `$n+2` (guest), `$n+3` (org)
/// bound by [`owner_args`].
fn owner_clause(n: usize) -> String {
    let (user, guest, org) = (n + 1, n + 2, n + 3);
    format!(
        "(${n} OR ((x.owner_user_id = ${user} OR x.owner_guest_scope = ${guest}) \
          AND x.owner_org_id IS NOT DISTINCT FROM ${org}))"
    )
}

fn owner_args(filter: &OwnerFilter) -> [Arg<'_>; 4] {
    match filter {
        OwnerFilter::Any => [
            Arg::Bool(true),
            Arg::OptText(None),
            Arg::OptText(None),
            Arg::OptText(None),
        ],
        OwnerFilter::Principal {
            user_id,
            guest_scope,
            org_id,
        } => [
            Arg::Bool(false),
            Arg::OptText(user_id.as_deref()),
            Arg::OptText(guest_scope.as_deref()),
            Arg::OptText(org_id.as_deref()),
        ],
    }
}

fn rebuild_missing(spec: &ProjectorSpec) -> StoreError {
    StoreError::RebuildState {
        projector: spec.name.to_owned(),
        message: "no rebuild in progress".into(),
    }
}

fn one_row(
    watermark: u64,
    key: &str,
    version: u64,
    payload: &str,
    hash: &str,
    owner: &DocOwner,
    at_ms: i64,
) -> Rows {
    let mut rows = Rows::default();
    rows.push(watermark, key, version, payload, hash, owner, at_ms);
    rows
}

impl<D: Dialect> SqlStore<D> {
    pub(super) fn new(
        pool: Pool<D>,
        write_lock: Option<Arc<engine::journal::SqliteWriter>>,
    ) -> Self {
        Self {
            pool,
            write_lock,
            checkpoints: format!("{}projection_checkpoints", D::TABLES),
            topics: format!("{}sync_topic_sequences", D::TABLES),
            stream: format!("{}sync_stream_events", D::TABLES),
        }
    }

    pub(super) fn pool(&self) -> &Pool<D> {
        &self.pool
    }

    fn docs(spec: &ProjectorSpec, target: Target) -> String {
        match target {
            Target::Live => format!("{}{}", D::TABLES, spec.table),
            Target::Rebuild => format!("{}{}_rebuild", D::TABLES, spec.table),
        }
    }

    async fn read(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<D::Row>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        D::fetch(&mut conn, sql, args).await
    }

    async fn write(&self) -> Result<WriteTx<D>, StoreError> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self.pool.begin_with(D::BEGIN_WRITE).await?;
        Ok(WriteTx { tx, _guard: guard })
    }

    /// The checkpoint row of `projector`, locked until the end of `w`.
    async fn lock_checkpoint(
        &self,
        w: &mut WriteTx<D>,
        projector: &str,
    ) -> Result<Locked, StoreError> {
        let sql = format!(
            "SELECT {LOCKED_COLUMNS} FROM {} WHERE projector = $1{}",
            self.checkpoints,
            D::FOR_UPDATE
        );
        let rows = w.fetch(&sql, &[Arg::Text(projector)]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::UnknownProjector(projector.to_owned()))?;
        locked(row)
    }

    /// Allocates `n` watermarks of `topic` (under its row lock); returns the first.
    async fn allocate(
        &self,
        w: &mut WriteTx<D>,
        topic: &str,
        n: u64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE {} SET head_watermark = head_watermark + $2, updated_at_ms = $3
              WHERE topic = $1
          RETURNING head_watermark",
            self.topics
        );
        let rows = w
            .fetch(
                &sql,
                &[Arg::Text(topic), Arg::Int(to_i64(n)), Arg::Int(now_ms)],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt(format!("topic {topic} is not registered")))?;
        Ok(row.uint("head_watermark")? + 1 - n)
    }

    async fn insert_rows(
        &self,
        w: &mut WriteTx<D>,
        topic: &str,
        rows: &Rows,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {}
                (topic, watermark, doc_key, doc_version, payload, payload_hash,
                 owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, inserted_at_ms)
             SELECT $1, r.w, r.k, r.v, CAST(r.p AS {}), r.h, r.u, r.g, r.o, r.t, $2
               FROM {}",
            self.stream,
            D::JSON,
            D::rows(3)
        );
        w.execute(&sql, &[Arg::Text(topic), Arg::Int(now_ms), Arg::Rows(rows)])
            .await?;
        Ok(())
    }

    async fn upsert_docs(
        &self,
        w: &mut WriteTx<D>,
        table: &str,
        docs: &Rows,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.
        let sql = format!(
            "INSERT INTO {table} ({DOC_TABLE_COLUMNS})
             SELECT r.k, r.v, CAST(r.p AS {}), r.h, r.w, r.u, r.g, r.o, r.t, $1
               FROM {} WHERE true
             ON CONFLICT (doc_key) DO UPDATE SET
                 doc_version = EXCLUDED.doc_version, payload = EXCLUDED.payload,
                 payload_hash = EXCLUDED.payload_hash, watermark = EXCLUDED.watermark,
                 owner_user_id = EXCLUDED.owner_user_id,
                 owner_guest_scope = EXCLUDED.owner_guest_scope,
                 owner_org_id = EXCLUDED.owner_org_id, projected_at_ms = EXCLUDED.projected_at_ms,
                 updated_at_ms = EXCLUDED.updated_at_ms",
            D::JSON,
            D::rows(2)
        );
        w.execute(&sql, &[Arg::Int(now_ms), Arg::Rows(docs)])
            .await?;
        Ok(())
    }

    pub(super) async fn register(
        &self,
        spec: &ProjectorSpec,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let sql = format!(
            "INSERT INTO {} (projector, topic, projection_version, updated_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (projector) DO NOTHING",
            self.checkpoints
        );
        let version = Arg::Int(i64::from(spec.version));
        w.execute(
            &sql,
            &[
                Arg::Text(spec.name),
                Arg::Text(spec.topic),
                version,
                Arg::Int(now_ms),
            ],
        )
        .await?;
        let sql = format!(
            "INSERT INTO {} (topic, updated_at_ms) VALUES ($1, $2) ON CONFLICT (topic) DO NOTHING",
            self.topics
        );
        w.execute(&sql, &[Arg::Text(spec.topic), Arg::Int(now_ms)])
            .await?;
        w.commit().await
    }

    pub(super) async fn checkpoint(
        &self,
        projector: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM {} WHERE projector = $1",
            self.checkpoints
        );
        let rows = self.read(&sql, &[Arg::Text(projector)]).await?;
        rows.first().map(checkpoint).transpose()
    }

    pub(super) async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM {} ORDER BY projector",
            self.checkpoints
        );
        self.read(&sql, &[]).await?.iter().map(checkpoint).collect()
    }

    pub(super) async fn try_acquire(
        &self,
        projector: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut w = self.write().await?;
        let sql = format!(
            "UPDATE {} SET lease_owner = $2, lease_expires_at_ms = $3 + $4, updated_at_ms = $3
              WHERE projector = $1
                AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at_ms < $3)
          RETURNING {CHECKPOINT_COLUMNS}",
            self.checkpoints
        );
        let args = [
            Arg::Text(projector),
            Arg::Text(owner),
            Arg::Int(now_ms),
            Arg::Int(ttl_ms),
        ];
        let held = w.fetch(&sql, &args).await?.first().map(checkpoint);
        let held = held.transpose()?;
        w.commit().await?;
        Ok(held)
    }

    pub(super) async fn release(&self, projector: &str, owner: &str) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let sql = format!(
            "UPDATE {} SET lease_owner = NULL, lease_expires_at_ms = 0
              WHERE projector = $1 AND lease_owner = $2",
            self.checkpoints
        );
        w.execute(&sql, &[Arg::Text(projector), Arg::Text(owner)])
            .await?;
        w.commit().await
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
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM {} WHERE doc_key {}",
            Self::docs(spec, target),
            D::in_list(1)
        );
        let rows = self.read(&sql, &[Arg::Texts(keys)]).await?;
        rows.iter().map(doc_row).collect()
    }

    pub(super) async fn commit(&self, batch: BatchCommit<'_>) -> Result<Committed, StoreError> {
        let spec = batch.spec;
        let mut w = self.write().await?;
        let locked = self.lock_checkpoint(&mut w, spec.name).await?;
        if locked.lease_owner.as_deref() != Some(batch.owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let stored = match batch.target {
            Target::Live => locked.cursor,
            Target::Rebuild => locked.rebuild.ok_or_else(|| rebuild_missing(spec))?.cursor,
        };
        if stored != batch.from {
            return Err(StoreError::CursorMoved(spec.name.to_owned()));
        }
        let mut committed = Committed::default();
        if batch.target == Target::Live && !batch.rows.is_empty() {
            let n = batch.rows.len() as u64;
            let first = self.allocate(&mut w, spec.topic, n, batch.now_ms).await?;
            let mut rows = Rows::default();
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
            self.insert_rows(&mut w, spec.topic, &rows, batch.now_ms)
                .await?;
            committed.first_watermark = Some(first);
            committed.head_watermark = first + n - 1;
        }
        if !batch.docs.is_empty() {
            let mut docs = Rows::default();
            for d in &batch.docs {
                let watermark = match (d.last_row, committed.first_watermark) {
                    (Some(i), Some(first)) => first + i as u64,
                    _ => 0,
                };
                docs.push(
                    watermark,
                    &d.doc_key,
                    d.doc_version,
                    &d.payload,
                    &d.payload_hash,
                    &d.owner,
                    d.projected_at_ms,
                );
            }
            let table = Self::docs(spec, batch.target);
            self.upsert_docs(&mut w, &table, &docs, batch.now_ms)
                .await?;
        }
        let (transaction, position, events) = match batch.target {
            Target::Live => ("cursor_transaction", "cursor_position", "events_projected"),
            Target::Rebuild => (
                "rebuild_cursor_transaction",
                "rebuild_cursor_position",
                "rebuild_events",
            ),
        };
        let sql = format!(
            "UPDATE {} SET {transaction} = $2, {position} = $3, {events} = {events} + $4,
                    lease_expires_at_ms = $5 + $6, updated_at_ms = $5
              WHERE projector = $1",
            self.checkpoints
        );
        let args = [
            Arg::Text(spec.name),
            Arg::Int(to_i64(batch.to.transaction())),
            Arg::Int(to_i64(batch.to.position())),
            Arg::Int(to_i64(batch.events)),
            Arg::Int(batch.now_ms),
            Arg::Int(batch.lease_ttl_ms),
        ];
        w.execute(&sql, &args).await?;
        w.commit().await?;
        Ok(committed)
    }

    pub(super) async fn request_rebuild(
        &self,
        projector: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let sql = format!(
            "UPDATE {} SET rebuild_requested = true, updated_at_ms = $2 WHERE projector = $1",
            self.checkpoints
        );
        let changed = w
            .execute(&sql, &[Arg::Text(projector), Arg::Int(now_ms)])
            .await?;
        w.commit().await?;
        Ok(changed == 1)
    }

    pub(super) async fn begin_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let locked = self.lock_checkpoint(&mut w, spec.name).await?;
        if locked.lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let sql = format!("DELETE FROM {}", Self::docs(spec, Target::Rebuild));
        w.execute(&sql, &[]).await?;
        let sql = format!(
            "UPDATE {}
                SET rebuild_version = $2, rebuild_cursor_transaction = 0,
                    rebuild_cursor_position = 0, rebuild_events = 0,
                    rebuild_started_at_ms = $3, rebuild_requested = false, updated_at_ms = $3
              WHERE projector = $1",
            self.checkpoints
        );
        let args = [
            Arg::Text(spec.name),
            Arg::Int(i64::from(spec.version)),
            Arg::Int(now_ms),
        ];
        w.execute(&sql, &args).await?;
        w.commit().await
    }

    pub(super) async fn finish_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<Swapped, StoreError> {
        let mut w = self.write().await?;
        let locked = self.lock_checkpoint(&mut w, spec.name).await?;
        if locked.lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost(spec.name.to_owned()));
        }
        let version = locked.rebuild.ok_or_else(|| rebuild_missing(spec))?.version;
        let sql = format!(
            "SELECT epoch FROM {} WHERE topic = $1{}",
            self.topics,
            D::FOR_UPDATE
        );
        let rows = w.fetch(&sql, &[Arg::Text(spec.topic)]).await?;
        let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
        let epoch = row.uint("epoch")? + 1;
        let marker = self.allocate(&mut w, spec.topic, 1, now_ms).await?;
        let sql = format!("DELETE FROM {} WHERE topic = $1", self.stream);
        w.execute(&sql, &[Arg::Text(spec.topic)]).await?;
        let payload = json!({"epoch": epoch, "projection_version": version, "reason": "rebuild"});
        let marker_row = one_row(
            marker,
            &epoch_marker_key(spec.topic),
            epoch,
            &payload.to_string(),
            &aggregates::canonical::hash_canonical(&payload),
            &DocOwner::default(),
            now_ms,
        );
        self.insert_rows(&mut w, spec.topic, &marker_row, now_ms)
            .await?;
        let live = Self::docs(spec, Target::Live);
        let shadow = Self::docs(spec, Target::Rebuild);
        w.execute(&format!("DELETE FROM {live}"), &[]).await?;
        let sql = format!(
            "INSERT INTO {live} ({DOC_TABLE_COLUMNS})
             SELECT doc_key, doc_version, payload, payload_hash, $1,
                    owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms
               FROM {shadow}"
        );
        let docs = w.execute(&sql, &[Arg::Int(to_i64(marker))]).await?;
        w.execute(&format!("DELETE FROM {shadow}"), &[]).await?;
        let sql = format!(
            "UPDATE {} SET retention_floor = $2, epoch = $3, epoch_start = $2, updated_at_ms = $4
              WHERE topic = $1",
            self.topics
        );
        let args = [
            Arg::Text(spec.topic),
            Arg::Int(to_i64(marker)),
            Arg::Int(to_i64(epoch)),
            Arg::Int(now_ms),
        ];
        w.execute(&sql, &args).await?;
        let sql = format!(
            "UPDATE {}
                SET cursor_transaction = rebuild_cursor_transaction,
                    cursor_position = rebuild_cursor_position,
                    events_projected = rebuild_events, projection_version = rebuild_version,
                    rebuild_version = NULL, rebuild_cursor_transaction = NULL,
                    rebuild_cursor_position = NULL, rebuild_events = 0,
                    rebuild_started_at_ms = NULL, last_rebuilt_at_ms = $2, updated_at_ms = $2
              WHERE projector = $1",
            self.checkpoints
        );
        w.execute(&sql, &[Arg::Text(spec.name), Arg::Int(now_ms)])
            .await?;
        w.commit().await?;
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
        let locked = self.lock_checkpoint(&mut w, spec.name).await?;
        if locked.rebuild.is_some() {
            return Err(StoreError::RebuildState {
                projector: spec.name.to_owned(),
                message: "a full rebuild is in progress; repair after it finished".into(),
            });
        }
        let computed = compute(locked.cursor).await?;
        let live = Self::docs(spec, Target::Live);
        let select = format!(
            "SELECT {ROW_COLUMNS} FROM {live} WHERE doc_key = $1{}",
            D::FOR_UPDATE
        );
        let mut outcomes = Vec::with_capacity(computed.len());
        for doc in computed {
            let stored = w.fetch(&select, &[Arg::Text(&doc.doc_key)]).await?;
            let stored = stored.first().map(doc_row).transpose()?;
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
            let watermark = self.allocate(&mut w, spec.topic, 1, now_ms).await?;
            let row = one_row(
                watermark,
                &doc.doc_key,
                version,
                &doc.payload,
                &doc.payload_hash,
                &doc.owner,
                doc.projected_at_ms,
            );
            self.insert_rows(&mut w, spec.topic, &row, now_ms).await?;
            self.upsert_docs(&mut w, &live, &row, now_ms).await?;
            outcomes.push((
                doc.doc_key,
                Repaired::Written {
                    doc_version: version,
                    watermark,
                },
            ));
        }
        w.commit().await?;
        Ok(outcomes)
    }

    pub(super) async fn topic_states(
        &self,
        topics: &[&str],
    ) -> Result<Vec<TopicState>, StoreError> {
        let names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let sql = format!(
            "SELECT topic, head_watermark, retention_floor, epoch, epoch_start
               FROM {} WHERE topic {}",
            self.topics,
            D::in_list(1)
        );
        let mut found = std::collections::HashMap::new();
        for row in &self.read(&sql, &[Arg::Texts(&names)]).await? {
            let topic = row.text("topic")?;
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
        // One statement, so one snapshot: the floor is checked against the rows it returns.
        let sql = format!(
            "SELECT t.head_watermark, t.retention_floor, t.epoch, t.epoch_start, s.*
               FROM {} t
               LEFT JOIN (
                    SELECT {ROW_COLUMNS} FROM {} x
                     WHERE x.topic = $1 AND x.watermark > $2 AND {}
                     ORDER BY x.watermark
                     LIMIT $3) s ON $2 >= t.retention_floor
              WHERE t.topic = $1
              ORDER BY s.watermark",
            self.topics,
            self.stream,
            owner_clause(4)
        );
        let [any, user, guest, org] = owner_args(filter);
        let args = [
            Arg::Text(topic),
            Arg::Int(to_i64(after)),
            Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            any,
            user,
            guest,
            org,
        ];
        let rows = self.read(&sql, &args).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let state = topic_state(topic, first)?;
        if after < state.retention_floor {
            return Err(ReadError::Stale { after, state });
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.opt_text("doc_key")?.is_some() {
                out.push(stream_row(topic, row)?);
            }
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
        // One statement, so one snapshot: the head is the one the documents are as of.
        let bytes = D::BYTE_ORDER;
        let sql = format!(
            "SELECT coalesce(t.head_watermark, 0) AS head_watermark, d.*
               FROM (SELECT CAST($1 AS TEXT) AS topic) q
               LEFT JOIN {} t ON t.topic = q.topic
               LEFT JOIN (
                    SELECT {ROW_COLUMNS} FROM {} x
                     WHERE ($2 IS NULL OR x.doc_key = $2) AND {}
                       AND ($7 IS NULL OR x.doc_key{bytes} > $7)
                     ORDER BY x.doc_key{bytes}
                     LIMIT $8) d ON true
              ORDER BY d.doc_key{bytes}",
            self.topics,
            Self::docs(spec, Target::Live),
            owner_clause(3)
        );
        let [any, user, guest, org] = owner_args(filter);
        let args = [
            Arg::Text(spec.topic),
            Arg::OptText(doc_key),
            any,
            user,
            guest,
            org,
            Arg::OptText(page.after),
            Arg::Int(page.fetch_limit()),
        ];
        let rows = self.read(&sql, &args).await?;
        let watermark = match rows.first() {
            Some(row) => row.uint("head_watermark")?,
            None => 0,
        };
        let mut docs = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.opt_text("doc_key")?.is_some() {
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
        let mut w = self.write().await?;
        let sql = format!(
            "SELECT retention_floor FROM {} WHERE topic = $1{}",
            self.topics,
            D::FOR_UPDATE
        );
        let rows = w.fetch(&sql, &[Arg::Text(spec.topic)]).await?;
        let Some(row) = rows.first() else {
            return Ok(Pruned::default());
        };
        let floor = row.int("retention_floor")?;
        let sql = format!(
            "SELECT max(watermark) AS pruned_through FROM (
                 SELECT watermark, inserted_at_ms FROM {}
                  WHERE topic = $1 AND watermark > $2 ORDER BY watermark LIMIT $3) q
              WHERE inserted_at_ms < $4",
            self.stream
        );
        let args = [
            Arg::Text(spec.topic),
            Arg::Int(floor),
            Arg::Int(to_i64(max_rows)),
            Arg::Int(cutoff_ms),
        ];
        let rows = w.fetch(&sql, &args).await?;
        let through = match rows.first() {
            Some(row) => row.opt_int("pruned_through")?,
            None => None,
        };
        let mut pruned = Pruned {
            retention_floor: super::to_u64(floor, "watermark")?,
            ..Pruned::default()
        };
        if let Some(through) = through {
            let sql = format!(
                "DELETE FROM {} WHERE topic = $1 AND watermark <= $2",
                self.stream
            );
            pruned.rows = w
                .execute(&sql, &[Arg::Text(spec.topic), Arg::Int(through)])
                .await?;
            let sql = format!(
                "UPDATE {} SET retention_floor = $2, updated_at_ms = $3 WHERE topic = $1",
                self.topics
            );
            let args = [Arg::Text(spec.topic), Arg::Int(through), Arg::Int(now_ms)];
            w.execute(&sql, &args).await?;
            pruned.retention_floor = super::to_u64(through, "watermark")?;
        }
        if spec.docs_are_events {
            let live = Self::docs(spec, Target::Live);
            let sql = format!(
                "DELETE FROM {live} WHERE doc_key IN (
                     SELECT doc_key FROM {live} WHERE updated_at_ms < $1 LIMIT $2)"
            );
            pruned.docs = w
                .execute(&sql, &[Arg::Int(cutoff_ms), Arg::Int(to_i64(max_rows))])
                .await?;
        }
        w.commit().await?;
        Ok(pruned)
    }

    pub(super) async fn all_docs(&self, spec: &ProjectorSpec) -> Result<Vec<DocRow>, StoreError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM {} ORDER BY doc_key{}",
            Self::docs(spec, Target::Live),
            D::BYTE_ORDER
        );
        self.read(&sql, &[]).await?.iter().map(doc_row).collect()
    }
}

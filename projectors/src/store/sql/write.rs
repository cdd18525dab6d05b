//! A projector's batch: loading the documents it folds into, and committing its watermarks,
//! stream rows, documents and cursor in one transaction (the lease and the cursor checked under
//! the checkpoint's row lock first).

use super::rows::{doc_row, DOC_TABLE_COLUMNS, ROW_COLUMNS};
use super::{SqlStore, WriteTx};
use crate::store::dialect::{Arg, Columns, Dialect, Rows};
use crate::store::{to_i64, BatchCommit, Committed, DocRow, ProjectorSpec, StoreError, Target};

pub(super) fn rebuild_missing(spec: &ProjectorSpec) -> StoreError {
    StoreError::RebuildState {
        projector: spec.name.to_owned(),
        message: "no rebuild in progress".into(),
    }
}

impl<D: Dialect> SqlStore<D> {
    /// Allocates `n` watermarks of `topic` (under its row lock); returns the first.
    pub(super) async fn allocate(
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

    pub(super) async fn insert_rows(
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

    pub(super) async fn upsert_docs(
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

    pub(in crate::store) async fn load_docs(
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

    pub(in crate::store) async fn commit(
        &self,
        batch: BatchCommit<'_>,
    ) -> Result<Committed, StoreError> {
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
}

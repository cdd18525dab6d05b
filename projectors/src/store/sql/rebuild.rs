//! Statements that rewrite a topic's history: a full rebuild (requested, begun into the shadow
//! table, swapped in as a new epoch behind an epoch marker), an entity repair, and retention
//! pruning of the stream (and of documents that are events).

use engine::journal::GlobalCursor;
use serde_json::json;

use super::rows::{doc_row, one_row, DOC_TABLE_COLUMNS, ROW_COLUMNS};
use super::write::rebuild_missing;
use super::SqlStore;
use crate::model::DocOwner;
use crate::store::dialect::{Arg, Columns, Dialect};
use crate::store::{
    epoch_marker_key, to_i64, DocWrite, ProjectorSpec, Pruned, Repaired, StoreError, Swapped,
    Target,
};

impl<D: Dialect> SqlStore<D> {
    pub(in crate::store) async fn request_rebuild(
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

    pub(in crate::store) async fn begin_rebuild(
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

    pub(in crate::store) async fn finish_rebuild(
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

    pub(in crate::store) async fn repair_docs<F, Fut>(
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

    pub(in crate::store) async fn prune(
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
            retention_floor: crate::store::to_u64(floor, "watermark")?,
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
            pruned.retention_floor = crate::store::to_u64(through, "watermark")?;
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
}

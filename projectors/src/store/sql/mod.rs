//! The projection store's SQL, written once for both backends: every statement, transaction and
//! row decoder behind [`SyncStore`](super::SyncStore), generic over the [`Dialect`] that spells
//! the few differences between PostgreSQL and SQLite.
//!
//! Writes run in one write transaction each ([`Dialect::BEGIN_WRITE`]; on SQLite under the
//! process-wide writer lock too, so writers queue in-process instead of hitting `SQLITE_BUSY`).
//! Reads that must see one snapshot (a topic's floor with its rows, its head with its documents)
//! are single statements, which both databases run against one snapshot.
//!
//! # Layout
//! - this file: the store's tables, write transactions, the checkpoint lock, and the checkpoint
//!   and lease statements (register, read, acquire, release).
//! - `rows`: the column lists and the row decoders every statement shares.
//! - `write`: a projector's batch: loading the documents it folds into, and committing its
//!   watermarks, stream rows, documents and cursor in one transaction.
//! - `rebuild`: statements that rewrite a topic's history: full rebuilds (begin, swap in a new
//!   epoch), entity repairs, and retention pruning.
//! - `read`: the gateway's snapshot reads: topic states, the stream after a cursor, hydration.

mod read;
mod rebuild;
mod rows;
mod write;

use std::sync::Arc;

use sqlx::{Pool, Transaction};
use tokio::sync::OwnedMutexGuard;

use super::dialect::{Arg, Dialect};
use super::{Checkpoint, ProjectorSpec, StoreError, Target};
use rows::{checkpoint, locked, Locked, CHECKPOINT_COLUMNS, LOCKED_COLUMNS};

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
}

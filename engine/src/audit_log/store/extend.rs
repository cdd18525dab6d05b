//! Extending the tree: a batch of journal events becomes leaves on the tree's right edge, and the
//! tiles it completed or grew are written with the new cursor and size in one transaction that
//! first checks nobody moved the tree row.

use std::collections::BTreeMap;

use sqlx::Row;

use super::tiles::{edge_tiles, Edge, Tile};
use super::{table, AuditStore, LeafBuilder, StoreError, TreeState};
use crate::backoff::HorizonWait;
use crate::clock::now_ms;
use crate::db::Database;
use crate::journal::{GlobalCursor, Journal};

impl AuditStore {
    /// Extends the tree by up to `limit` events of the journal; how many it added (0 when the
    /// tree has caught up, or another process extended it first).
    ///
    /// # Errors
    /// When the journal or the database fails, or the stored right edge is missing a tile.
    ///
    /// # Cancel safety
    /// Cancel safe: the batch is one transaction; dropping the future rolls it back.
    pub async fn extend(&self, limit: usize) -> Result<u64, StoreError> {
        let state = self.state().await?;
        // Stored text: most leaves need only the stored hashes in the metadata (`leaf_raw`).
        let events = self.journal.read_all_raw(state.cursor, limit).await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let last_cursor = last.cursor;
        let ids: Vec<_> = edge_tiles(state.tree_size)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let stored: BTreeMap<_, _> = self
            .read_tiles(&ids, true)
            .await?
            .into_iter()
            .map(|t| (t.id(), t))
            .collect();
        let mut edge = Edge::new(state.tree_size, &stored).map_err(StoreError::Corrupt)?;
        let mut builder = LeafBuilder::new(self.journal.clone(), state.redaction_key.clone());
        for event in events {
            let cursor = event.cursor;
            edge.push(builder.leaf_raw(event).await?, cursor);
        }
        let added = edge.size() - state.tree_size;
        let new_size = edge.size();
        let written = self
            .write_batch(&state, new_size, last_cursor, &edge.into_changed())
            .await?;
        Ok(if written { added } else { 0 })
    }

    /// The batch's transaction: the tiles upserted (a tile only grows) and the tree row moved;
    /// `false` when the tree row moved since `state` was read.
    async fn write_batch(
        &self,
        state: &TreeState,
        new_size: u64,
        cursor: GlobalCursor,
        tiles: &[Tile],
    ) -> Result<bool, StoreError> {
        let tree = table(&self.database, "audit_tree");
        let tile_table = table(&self.database, "audit_tree_tiles");
        let lock_suffix = match &self.database {
            Database::Postgres(_) => " FOR UPDATE",
            Database::Sqlite { .. } => "",
        };
        let lock = format!(
            "SELECT tree_size, cursor_transaction, cursor_position FROM {tree} WHERE id = 1{lock_suffix}"
        );
        let update = format!(
            "UPDATE {tree} SET tree_size = $1, cursor_transaction = $2, cursor_position = $3, updated_at_ms = $4 WHERE id = 1"
        );
        let upsert = format!(
            "INSERT INTO {tile_table} (level, idx, hashes, first_transaction, first_position, cursors)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (level, idx) DO UPDATE SET hashes = excluded.hashes,
                 first_transaction = excluded.first_transaction,
                 first_position = excluded.first_position, cursors = excluded.cursors"
        );
        macro_rules! body {
            ($tx:ident) => {{
                let row = sqlx::query(&lock).fetch_one(&mut *$tx).await?;
                let size: i64 = row.try_get("tree_size")?;
                let t: i64 = row.try_get("cursor_transaction")?;
                let p: i64 = row.try_get("cursor_position")?;
                if size as u64 != state.tree_size
                    || t as u64 != state.cursor.transaction()
                    || p as u64 != state.cursor.position()
                {
                    return Ok(false);
                }
                for tile in tiles {
                    let first = tile.first_cursor();
                    sqlx::query(&upsert)
                        .bind(i16::from(tile.level))
                        .bind(tile.index as i64)
                        .bind(tile.hash_bytes())
                        .bind(first.map(|c| c.transaction() as i64))
                        .bind(first.map(|c| c.position() as i64))
                        .bind(tile.cursor_bytes())
                        .execute(&mut *$tx)
                        .await?;
                }
                sqlx::query(&update)
                    .bind(new_size as i64)
                    .bind(cursor.transaction() as i64)
                    .bind(cursor.position() as i64)
                    .bind(now_ms())
                    .execute(&mut *$tx)
                    .await?;
                $tx.commit().await?;
                Ok(true)
            }};
        }
        match &self.database {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                body!(tx)
            }
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                body!(tx)
            }
        }
    }

    /// Extends the tree until it holds every event committed when it began (waiting, on
    /// PostgreSQL, for the read horizon to pass them); how many leaves the tree grew by.
    ///
    /// # Errors
    /// As [`AuditStore::extend`], or [`StoreError::HorizonStuck`] when the committed events stay
    /// out of reach for a minute (a transaction left open on the server).
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        let start = self.state().await?;
        let pending = self.journal.count_after(start.cursor, u64::MAX / 2).await?;
        let target = start.tree_size + pending;
        let mut wait = HorizonWait::new(HorizonWait::DEFAULT_LIMIT);
        loop {
            let added = self.extend(1_000).await?;
            let size = self.state().await?.tree_size;
            if size >= target {
                return Ok(size - start.tree_size);
            }
            if added == 0 && !wait.pause().await {
                return Err(StoreError::HorizonStuck { size, target });
            }
        }
    }
}

//! Extending the tree: a batch of journal events becomes leaves and completed nodes, written
//! with the new cursor and size in one transaction that first checks nobody moved the tree row.

use sqlx::Row;

use super::{table, AuditStore, LeafBuilder, LeafRow, StoreError, TreeState};
use crate::audit_log::merkle::{self, Hash, NodeId, Span};
use crate::backoff::HorizonWait;
use crate::clock::now_ms;
use crate::db::Database;
use crate::journal::{GlobalCursor, Journal};

/// Rows per multi-row INSERT (3 to 6 parameters each; under both databases' limits).
const INSERT_CHUNK: usize = 500;

impl AuditStore {
    /// Extends the tree by up to `limit` events of the journal; how many it added (0 when the
    /// tree has caught up, or another process extended it first).
    ///
    /// # Errors
    /// When the journal or the database fails, or the stored frontier is missing a node.
    ///
    /// # Cancel safety
    /// Cancel safe: the batch is one transaction; dropping the future rolls it back.
    pub async fn extend(&self, limit: usize) -> Result<u64, StoreError> {
        let state = self.state().await?;
        let events = self.journal.read_all(state.cursor, limit).await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let last_cursor = last.cursor;
        let frontier = merkle::perfect_nodes(Span {
            start: 0,
            end: state.tree_size,
        });
        let mut known = self.nodes(&frontier).await?;
        if known.len() != frontier.len() {
            return Err(StoreError::Corrupt(format!(
                "the frontier of the tree of {} leaves is incomplete",
                state.tree_size
            )));
        }
        let mut builder = LeafBuilder::new(self.journal.clone(), state.redaction_key.clone());
        let mut new_nodes: Vec<(NodeId, Hash)> = Vec::with_capacity(events.len() * 2);
        let mut leaves: Vec<LeafRow> = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let index = state.tree_size + i as u64;
            let leaf = builder.leaf(event).await?;
            for node in merkle::completed_by_leaf(index) {
                let hash = if node.level == 0 {
                    leaf
                } else {
                    let (l, r) = node.children();
                    match (known.get(&l), known.get(&r)) {
                        (Some(l), Some(r)) => merkle::node_hash(l, r),
                        _ => {
                            return Err(StoreError::Corrupt(format!(
                                "children of node {}/{} are missing",
                                node.level, node.index
                            )))
                        }
                    }
                };
                known.insert(node, hash);
                new_nodes.push((node, hash));
            }
            leaves.push(LeafRow {
                leaf_index: index,
                transaction_id: event.cursor.transaction() as i64,
                position: event.cursor.position() as i64,
                aggregate_type: event.event.aggregate_type.clone(),
                aggregate_id: event.event.aggregate_id.clone(),
                sequence: event.event.sequence as i64,
            });
        }
        let added = leaves.len() as u64;
        let written = self
            .write_batch(
                &state,
                state.tree_size + added,
                last_cursor,
                &new_nodes,
                &leaves,
            )
            .await?;
        Ok(if written { added } else { 0 })
    }

    /// The batch's transaction; `false` when the tree row moved since `state` was read.
    async fn write_batch(
        &self,
        state: &TreeState,
        new_size: u64,
        cursor: GlobalCursor,
        nodes: &[(NodeId, Hash)],
        leaves: &[LeafRow],
    ) -> Result<bool, StoreError> {
        let tree = table(&self.database, "audit_tree");
        let node_table = table(&self.database, "audit_tree_nodes");
        let leaf_table = table(&self.database, "audit_tree_leaves");
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
                for chunk in nodes.chunks(INSERT_CHUNK) {
                    let values: Vec<String> = (0..chunk.len())
                        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                        .collect();
                    let sql = format!(
                        "INSERT INTO {node_table} (level, idx, hash) VALUES {}",
                        values.join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for (id, hash) in chunk {
                        query = query
                            .bind(i16::from(id.level))
                            .bind(id.index as i64)
                            .bind(hash.to_vec());
                    }
                    query.execute(&mut *$tx).await?;
                }
                for chunk in leaves.chunks(INSERT_CHUNK) {
                    let values: Vec<String> = (0..chunk.len())
                        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                        .collect();
                    let sql = format!(
                        "INSERT INTO {leaf_table} (leaf_index, transaction_id, position) VALUES {}",
                        values.join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for leaf in chunk {
                        query = query
                            .bind(leaf.leaf_index as i64)
                            .bind(leaf.transaction_id)
                            .bind(leaf.position);
                    }
                    query.execute(&mut *$tx).await?;
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

//! The stored audit tree on both journals, and the maintainer that extends it.
//!
//! Like a projector, the maintainer reads the journal in global commit order
//! ([`Journal::read_all`]) from the tree's cursor, computes each event's leaf and every perfect
//! subtree it completes, and writes the leaves, the nodes and the new cursor and size in one
//! transaction that first locks the tree row and checks that nobody moved it meanwhile. A crash
//! at any point leaves either the whole batch or none of it; two processes never both extend
//! (the second finds the row moved and starts over). Nodes are immutable once written, so any
//! root, inclusion proof or consistency proof of any earlier size is read from them
//! ([`merkle::perfect_nodes`]). Checkpoints sign the root of a size the tree has reached.
//!
//! Tables (`migrations/*/20261206002000_audit_tree.sql`): `audit_tree` (one row),
//! `audit_tree_nodes`, `audit_tree_leaves`, `audit_checkpoints`; schema `runtime.` on
//! PostgreSQL, prefix `runtime_` on SQLite.

use std::collections::HashMap;
use std::time::Duration;

use aggregates::chain::{self, EventContent};
use serde_json::Value;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{AuditKey, Checkpoint};
use super::leaf::{disclose, event_leaf, RedactionKey};
use super::merkle::{self, Hash, NodeId, Span};
use crate::clock::now_ms;
use crate::db::Database;
use crate::journal::{AnyJournal, GlobalCursor, Journal, JournalError, StoredEvent};

/// Failures of the stored tree.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit tree database error")]
    Database(#[from] sqlx::Error),
    #[error("journal read failed")]
    Journal(#[from] JournalError),
    /// The stored tree is not what the journal gives (a node is missing or a row is malformed).
    #[error("the stored audit tree is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Proof(#[from] merkle::ProofError),
    /// Committed events stayed below the journal's read horizon for a minute.
    #[error("the audit tree reached {size} of {target} leaves and the journal's read horizon stopped moving (is a transaction left open on the server?)")]
    HorizonStuck { size: u64, target: u64 },
    /// A size or leaf past what the tree has reached.
    #[error("the audit tree has {size} leaves; {asked} is beyond it")]
    BeyondTree { asked: u64, size: u64 },
}

/// The tree row.
#[derive(Clone, Debug)]
pub struct TreeState {
    pub journal_id: String,
    pub redaction_key: RedactionKey,
    pub tree_size: u64,
    pub cursor: GlobalCursor,
}

/// Which event a leaf is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafRow {
    pub leaf_index: u64,
    pub transaction_id: i64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

/// Handle on the stored tree of one journal. Cheap to clone.
#[derive(Clone)]
pub struct AuditStore {
    database: Database,
    journal: AnyJournal,
}

fn table(database: &Database, name: &str) -> String {
    match database {
        Database::Postgres(_) => format!("runtime.{name}"),
        Database::Sqlite { .. } => format!("runtime_{name}"),
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool (the SQL is the same on both).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Database::Postgres($pool) => $body,
            Database::Sqlite { pool: $pool, .. } => $body,
        }
    };
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

/// Computes leaves of stored events: redaction and the chain hash of rows that have none
/// stored (written before the chain existed), continued from the aggregate's previous event.
pub struct LeafBuilder {
    journal: AnyJournal,
    key: RedactionKey,
    /// The last chain hash seen per aggregate, for rows without a stored one.
    heads: HashMap<(String, String), String>,
}

impl LeafBuilder {
    pub fn new(journal: AnyJournal, key: RedactionKey) -> Self {
        Self {
            journal,
            key,
            heads: HashMap::new(),
        }
    }

    /// The leaf hash of `event`.
    ///
    /// # Errors
    /// When an earlier event of a legacy aggregate cannot be read.
    pub async fn leaf(&mut self, event: &StoredEvent) -> Result<Hash, StoreError> {
        let e = &event.event;
        let content = EventContent {
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence: e.sequence as u64,
            event_type: &e.event_type,
            event_version: &e.event_version,
            payload: &e.payload,
            metadata: &e.metadata,
        };
        // The engine stores each event's content hash beside it (what its chain hash commits
        // to); the tree reuses it rather than re-canonicalising and hashing every payload. A
        // stored hash that does not match its content is caught where content is checked:
        // export and `audit verify` recompute it, as does `replay --journal`. Legacy events
        // without one are hashed here.
        let content_hash = e
            .metadata
            .get(chain::CONTENT_HASH_KEY)
            .and_then(Value::as_str)
            .map_or_else(|| content.content_hash(), str::to_owned);
        let stored_chain = e
            .metadata
            .get(chain::CHAIN_HASH_KEY)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let key = (e.aggregate_type.clone(), e.aggregate_id.clone());
        let chain_hash = match stored_chain {
            Some(stored) => stored,
            None => {
                let prev = match self.heads.get(&key) {
                    Some(prev) => Some(prev.clone()),
                    None if e.sequence <= 1 => None,
                    None => {
                        chain_before(
                            &self.journal,
                            &e.aggregate_type,
                            &e.aggregate_id,
                            e.sequence as u64,
                        )
                        .await?
                    }
                };
                chain::chain_hash(prev.as_deref(), &content_hash)
            }
        };
        let disclosed = disclose(&self.key, &content, &content_hash);
        let leaf = event_leaf(&chain_hash, &disclosed.disclosed_hash);
        if self.heads.len() > 100_000 {
            self.heads.clear();
        }
        self.heads.insert(key, chain_hash);
        Ok(leaf)
    }
}

/// The chain hash of an aggregate's event `sequence - 1`: stored, or computed from its start.
async fn chain_before(
    journal: &AnyJournal,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
) -> Result<Option<String>, StoreError> {
    let rows = journal
        .load_stored(aggregate_type, aggregate_id, 0, (sequence - 1) as usize)
        .await?;
    let mut prev: Option<String> = None;
    for row in rows {
        let e = &row.event;
        prev = Some(
            match e
                .metadata
                .get(chain::CHAIN_HASH_KEY)
                .and_then(Value::as_str)
            {
                Some(stored) => stored.to_owned(),
                None => {
                    let content = EventContent {
                        aggregate_type: &e.aggregate_type,
                        aggregate_id: &e.aggregate_id,
                        sequence: e.sequence as u64,
                        event_type: &e.event_type,
                        event_version: &e.event_version,
                        payload: &e.payload,
                        metadata: &e.metadata,
                    };
                    chain::link(prev.as_deref(), &content).1
                }
            },
        );
    }
    Ok(prev)
}

/// Rows per multi-row INSERT (3 to 6 parameters each; under both databases' limits).
const INSERT_CHUNK: usize = 500;

impl AuditStore {
    pub fn new(database: &Database) -> Self {
        Self {
            database: database.clone(),
            journal: database.journal(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The tree row, created (with a fresh journal id and redaction key) when missing.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn state(&self) -> Result<TreeState, StoreError> {
        let t = table(&self.database, "audit_tree");
        let select = format!(
            "SELECT journal_id, redaction_key, tree_size, cursor_transaction, cursor_position FROM {t} WHERE id = 1"
        );
        for _ in 0..2 {
            let row: Option<(String, String, i64, i64, i64)> = on_pool!(&self.database, pool => {
                match sqlx::query(&select).fetch_optional(pool).await? {
                    Some(row) => Some((
                        row.try_get("journal_id")?,
                        row.try_get("redaction_key")?,
                        row.try_get("tree_size")?,
                        row.try_get("cursor_transaction")?,
                        row.try_get("cursor_position")?,
                    )),
                    None => None,
                }
            });
            if let Some((journal_id, key, size, t, p)) = row {
                return Ok(TreeState {
                    journal_id,
                    redaction_key: RedactionKey::from_hex(&key)
                        .map_err(|e| StoreError::Corrupt(format!("redaction key: {e}")))?,
                    tree_size: to_u64(size, "tree_size")?,
                    cursor: GlobalCursor::new(to_u64(t, "cursor")?, to_u64(p, "cursor")?),
                });
            }
            let insert = format!(
                "INSERT INTO {t} (id, journal_id, redaction_key, updated_at_ms) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING"
            );
            let journal_id = uuid::Uuid::new_v4().to_string();
            let key = RedactionKey::generate().to_hex();
            match &self.database {
                Database::Postgres(pool) => {
                    sqlx::query(&insert)
                        .bind(&journal_id)
                        .bind(&key)
                        .bind(now_ms())
                        .execute(pool)
                        .await?;
                }
                Database::Sqlite { pool, write_lock } => {
                    let _writer = write_lock.lock().await;
                    sqlx::query(&insert)
                        .bind(&journal_id)
                        .bind(&key)
                        .bind(now_ms())
                        .execute(pool)
                        .await?;
                }
            }
        }
        Err(StoreError::Corrupt(
            "the audit tree row cannot be created".into(),
        ))
    }

    /// Reads the hashes of `ids` (missing ones are absent from the map).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let t = table(&self.database, "audit_tree_nodes");
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let clauses: Vec<String> = (0..chunk.len())
                .map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "SELECT level, idx, hash FROM {t} WHERE {}",
                clauses.join(" OR ")
            );
            let rows = on_pool!(&self.database, pool => {
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(i16::from(id.level)).bind(id.index as i64);
                }
                query.fetch_all(pool).await?
                    .into_iter()
                    .map(|row| {
                        let level: i16 = row.try_get("level")?;
                        let idx: i64 = row.try_get("idx")?;
                        let hash: Vec<u8> = row.try_get("hash")?;
                        Ok((level, idx, hash))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (level, idx, hash) in rows {
                let hash: Hash = hash.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("node {level}/{idx} is not 32 bytes"))
                })?;
                out.insert(
                    NodeId {
                        level: level as u8,
                        index: idx as u64,
                    },
                    hash,
                );
            }
        }
        Ok(out)
    }

    async fn span_hashes(&self, spans: &[Span]) -> Result<Vec<Hash>, StoreError> {
        let mut ids: Vec<NodeId> = spans
            .iter()
            .flat_map(|s| merkle::perfect_nodes(*s))
            .collect();
        ids.sort();
        ids.dedup();
        let nodes = self.nodes(&ids).await?;
        spans
            .iter()
            .map(|span| {
                merkle::span_hash(*span, |id| nodes.get(&id).copied()).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "a node of leaves {}..{} is missing",
                        span.start, span.end
                    ))
                })
            })
            .collect()
    }

    /// The root of the first `size` leaves.
    ///
    /// # Errors
    /// [`StoreError::BeyondTree`] past the tree, or a database failure.
    pub async fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.check_size(size).await?;
        Ok(self
            .span_hashes(&[Span {
                start: 0,
                end: size,
            }])
            .await?
            .pop()
            .expect("one span"))
    }

    async fn check_size(&self, size: u64) -> Result<u64, StoreError> {
        let have = self.state().await?.tree_size;
        if size > have {
            return Err(StoreError::BeyondTree {
                asked: size,
                size: have,
            });
        }
        Ok(have)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    ///
    /// # Errors
    /// Out of range, or a database failure.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size).await?;
        let spans = merkle::inclusion_spans(index, size)?;
        self.span_hashes(&spans).await
    }

    /// Inclusion proofs of many leaves in the tree of `size` leaves, with one node read.
    ///
    /// # Errors
    /// Out of range, or a database failure.
    pub async fn inclusion_proofs(
        &self,
        indices: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        let mut all_spans = Vec::with_capacity(indices.len());
        for index in indices {
            all_spans.push(merkle::inclusion_spans(*index, size)?);
        }
        let flat: Vec<Span> = all_spans.iter().flatten().copied().collect();
        let mut hashes = self.span_hashes(&flat).await?.into_iter();
        Ok(all_spans
            .iter()
            .map(|spans| hashes.by_ref().take(spans.len()).collect())
            .collect())
    }

    /// The consistency proof from `old_size` to `new_size`.
    ///
    /// # Errors
    /// Out of range, or a database failure.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new_size).await?;
        let spans = merkle::consistency_spans(old_size, new_size)?;
        self.span_hashes(&spans).await
    }

    /// The leaf of an event, if the tree has reached it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn leaf_of_event(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<Option<LeafRow>, StoreError> {
        let t = table(&self.database, "audit_tree_leaves");
        // The journal's own key finds the event's position; the position index its leaf.
        let sql = format!(
            "SELECT l.leaf_index, l.transaction_id, l.position FROM events e
               JOIN {t} l ON l.position = e.position
              WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3"
        );
        let row = on_pool!(&self.database, pool => {
            match sqlx::query(&sql)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence as i64)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some((
                    row.try_get::<i64, _>("leaf_index")?,
                    row.try_get::<i64, _>("transaction_id")?,
                    row.try_get::<i64, _>("position")?,
                )),
                None => None,
            }
        });
        row.map(|(leaf_index, transaction_id, position)| {
            Ok(LeafRow {
                leaf_index: to_u64(leaf_index, "leaf_index")?,
                transaction_id,
                position,
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence: sequence as i64,
            })
        })
        .transpose()
    }

    /// Leaf indices of the events at `positions` (those the tree has reached).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn leaves_at_positions(
        &self,
        positions: &[i64],
    ) -> Result<HashMap<i64, u64>, StoreError> {
        let t = table(&self.database, "audit_tree_leaves");
        let mut out = HashMap::with_capacity(positions.len());
        for chunk in positions.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT position, leaf_index FROM {t} WHERE position IN ({})",
                params.join(", ")
            );
            let rows: Vec<(i64, i64)> = on_pool!(&self.database, pool => {
                let mut query = sqlx::query(&sql);
                for p in chunk {
                    query = query.bind(*p);
                }
                query.fetch_all(pool).await?
                    .into_iter()
                    .map(|row| Ok((row.try_get("position")?, row.try_get("leaf_index")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (position, leaf) in rows {
                out.insert(position, to_u64(leaf, "leaf_index")?);
            }
        }
        Ok(out)
    }

    /// The stored leaf hashes of leaves `from..to`, in order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        let t = table(&self.database, "audit_tree_nodes");
        let sql = format!(
            "SELECT idx, hash FROM {t} WHERE level = 0 AND idx >= $1 AND idx < $2 ORDER BY idx"
        );
        let rows: Vec<(i64, Vec<u8>)> = on_pool!(&self.database, pool => {
            sqlx::query(&sql)
                .bind(from as i64)
                .bind(to as i64)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| Ok((row.try_get("idx")?, row.try_get("hash")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(i, h)| {
                let hash: Hash = h
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("leaf {i} is not 32 bytes")))?;
                Ok((to_u64(i, "idx")?, hash))
            })
            .collect()
    }

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
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let added = self.extend(1_000).await?;
            let size = self.state().await?.tree_size;
            if size >= target {
                return Ok(size - start.tree_size);
            }
            if added == 0 {
                if std::time::Instant::now() > deadline {
                    return Err(StoreError::HorizonStuck { size, target });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    fn parse_checkpoint(text: &str) -> Result<Checkpoint, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("stored checkpoint: {e}")))
    }

    /// The latest stored checkpoint.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let t = table(&self.database, "audit_checkpoints");
        let sql = format!("SELECT checkpoint FROM {t} ORDER BY tree_size DESC LIMIT 1");
        let text: Option<String> = on_pool!(&self.database, pool => {
            match sqlx::query(&sql).fetch_optional(pool).await? {
                Some(row) => Some(row.try_get("checkpoint")?),
                None => None,
            }
        });
        text.as_deref().map(Self::parse_checkpoint).transpose()
    }

    /// The stored checkpoint of exactly `tree_size` leaves.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn checkpoint_at(&self, tree_size: u64) -> Result<Option<Checkpoint>, StoreError> {
        let t = table(&self.database, "audit_checkpoints");
        let sql = format!("SELECT checkpoint FROM {t} WHERE tree_size = $1");
        let text: Option<String> = on_pool!(&self.database, pool => {
            match sqlx::query(&sql).bind(tree_size as i64).fetch_optional(pool).await? {
                Some(row) => Some(row.try_get("checkpoint")?),
                None => None,
            }
        });
        text.as_deref().map(Self::parse_checkpoint).transpose()
    }

    /// Every stored checkpoint, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let t = table(&self.database, "audit_checkpoints");
        let sql = format!("SELECT checkpoint FROM {t} ORDER BY tree_size");
        let texts: Vec<String> = on_pool!(&self.database, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get("checkpoint"))
                .collect::<Result<Vec<String>, sqlx::Error>>()?
        });
        texts.iter().map(|t| Self::parse_checkpoint(t)).collect()
    }

    /// Signs and stores a checkpoint of the tree as it is now, unless the latest one already has
    /// this size; the checkpoint of the current size either way (`None` for an empty tree).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn checkpoint_now(&self, key: &AuditKey) -> Result<Option<Checkpoint>, StoreError> {
        let state = self.state().await?;
        if state.tree_size == 0 {
            return Ok(None);
        }
        if let Some(existing) = self.checkpoint_at(state.tree_size).await? {
            return Ok(Some(existing));
        }
        let root = self.root_at(state.tree_size).await?;
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let checkpoint =
            Checkpoint::new(&state.journal_id, state.tree_size, &root, &timestamp).signed(key);
        let t = table(&self.database, "audit_checkpoints");
        let sql = format!(
            "INSERT INTO {t} (tree_size, root_hash, checkpoint, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING"
        );
        let text = serde_json::to_string(&checkpoint).expect("a checkpoint serialises");
        match &self.database {
            Database::Postgres(pool) => {
                sqlx::query(&sql)
                    .bind(state.tree_size as i64)
                    .bind(&checkpoint.root_hash)
                    .bind(&text)
                    .bind(now_ms())
                    .execute(pool)
                    .await?;
            }
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query(&sql)
                    .bind(state.tree_size as i64)
                    .bind(&checkpoint.root_hash)
                    .bind(&text)
                    .bind(now_ms())
                    .execute(pool)
                    .await?;
            }
        }
        // Another process may have stored its own checkpoint of this size first: serve that one.
        self.checkpoint_at(state.tree_size).await
    }

    /// Takes a checkpoint when one is due: the tree grew by `every_events` since the latest, or
    /// grew at all and the latest is older than `every` (or there is none).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn checkpoint_if_due(
        &self,
        key: &AuditKey,
        every_events: u64,
        every: Duration,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let size = self.state().await?.tree_size;
        let latest = self.latest_checkpoint().await?;
        let due = match &latest {
            None => size > 0,
            Some(cp) if cp.tree_size >= size => false,
            Some(cp) => {
                let age = chrono::DateTime::parse_from_rfc3339(&cp.timestamp)
                    .map(|t| chrono::Utc::now().signed_duration_since(t))
                    .ok()
                    .and_then(|d| d.to_std().ok())
                    .unwrap_or(Duration::MAX);
                size - cp.tree_size >= every_events || age >= every
            }
        };
        if !due {
            return Ok(None);
        }
        self.checkpoint_now(key).await
    }
}

/// Tunables of the tree maintainer.
#[derive(Clone, Debug)]
pub struct MaintainerConfig {
    /// Events per transaction.
    pub batch: usize,
    /// Take a checkpoint after this many new events…
    pub checkpoint_every_events: u64,
    /// …or this long after the latest one, if the tree grew.
    pub checkpoint_every: Duration,
    /// How often to look for new events without a local append notice (other processes).
    pub poll: Duration,
}

impl Default for MaintainerConfig {
    fn default() -> Self {
        Self {
            batch: 1_000,
            checkpoint_every_events: 1_000,
            checkpoint_every: Duration::from_secs(10),
            poll: Duration::from_millis(250),
        }
    }
}

/// Extends the tree and takes due checkpoints until `shutdown`: the `audit-tree` task of `serve`.
/// Wakes on `appended` (local commits) or every `poll`; failures are logged and retried with a
/// backoff, never fatal (the write path does not depend on the tree).
///
/// # Errors
/// Never; returns `Ok` at shutdown.
pub async fn run_tree_maintainer(
    store: AuditStore,
    key: AuditKey,
    config: MaintainerConfig,
    mut appended: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let step = async {
            let added = store.extend(config.batch).await?;
            store
                .checkpoint_if_due(
                    &key,
                    config.checkpoint_every_events,
                    config.checkpoint_every,
                )
                .await?;
            Ok::<u64, StoreError>(added)
        };
        match step.await {
            Ok(added) => {
                backoff.reset();
                metrics::counter!("audit_tree_leaves_added_total").increment(added);
                if added as usize >= config.batch {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error.message = %e, error.cause_chain = ?e, "audit tree: extend failed; retrying");
                if !backoff.sleep(&shutdown).await {
                    return Ok(());
                }
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = appended.changed() => {
                if changed.is_err() {
                    // No local notices any more (the engine is gone): poll.
                    tokio::time::sleep(config.poll).await;
                }
            }
            () = tokio::time::sleep(config.poll) => {}
        }
    }
}

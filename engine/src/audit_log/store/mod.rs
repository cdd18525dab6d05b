//! The stored audit tree on both journals, and the maintainer that extends it.
//!
//! Like a projector, the maintainer reads the journal in global commit order
//! ([`Journal::read_all`](crate::journal::Journal::read_all)) from the tree's cursor, computes each
//! event's leaf, appends it to the tree's right edge, and writes the tiles it completed or grew
//! and the new cursor and size in one transaction that first locks the tree row and checks that
//! nobody moved it meanwhile. A crash at any point leaves either the whole batch or none of it;
//! two processes never both extend (the second finds the row moved and starts over). The tree is
//! stored as tiles of 256 hashes (`tiles.rs`, ADR 0127): a tile only grows and never changes once
//! full, so any root, inclusion proof or consistency proof of any earlier size is computed from
//! them ([`merkle::perfect_nodes`]). Checkpoints sign the root of a size the tree has reached.
//!
//! Tables (`migrations/*/20261206002000_audit_tree.sql`, `…20261207000200_audit_tree_tiles.sql`):
//! `audit_tree` (one row), `audit_tree_tiles`, `audit_checkpoints`; schema `runtime.` on
//! PostgreSQL, prefix `runtime_` on SQLite.
//!
//! # Layout
//! - this file: [`AuditStore`], the tree row ([`AuditStore::state`]) and the failures;
//! - [`LeafBuilder`] (`leaves.rs`): an event's leaf, with the chain hash of legacy rows;
//! - `extend.rs`: [`AuditStore::extend`] and [`AuditStore::catch_up`], one batch per transaction;
//! - `tiles.rs`: the stored form (tiles of 256 hashes) and the tree's right edge, pure;
//! - `proofs.rs`: roots, inclusion and consistency proofs and leaf lookups read from the tiles;
//! - `checkpoints.rs`: storing, reading and taking signed checkpoints;
//! - `maintainer.rs`: [`run_tree_maintainer`], the `audit-tree` task.

use sqlx::Row;

use super::leaf::RedactionKey;
use super::merkle;
use crate::clock::now_ms;
use crate::db::Database;
use crate::journal::{AnyJournal, GlobalCursor, JournalError};

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

// Declared after `on_pool!`, which they use.
mod checkpoints;
mod extend;
mod leaves;
mod maintainer;
mod proofs;
mod tiles;

pub use leaves::LeafBuilder;
pub use maintainer::{run_tree_maintainer, MaintainerConfig};

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
}

//! Signed checkpoints of the tree: stored once per size, read back, and taken when due.

use std::time::Duration;

use sqlx::Row;

use super::{table, AuditStore, StoreError};
use crate::audit_log::checkpoint::{AuditKey, Checkpoint};
use crate::clock::now_ms;
use crate::db::Database;

impl AuditStore {
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

//! [`WalletLease`]: one executor per wallet, enforced. A row per wallet in
//! `lightning_executor_leases` (the journal's database) names the process that may reserve, send,
//! reconcile and release the wallet's payments. It is taken with a conditional upsert (free,
//! expired, or already mine), renewed every third of its TTL, and released on shutdown. A holder
//! counts itself as holding only until two thirds of the TTL after it *sent* its last successful
//! renewal (its own monotonic clock), so it stops acting a third of the TTL before a peer may take
//! over (ADR 0082).

use std::time::Duration;

use engine::AnyJournal;
use tokio::time::Instant;

/// Failures talking to the lease table.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease table cannot be reached")]
    Database(#[from] sqlx::Error),
}

/// One process's claim on one wallet.
#[derive(Clone)]
pub struct WalletLease {
    journal: AnyJournal,
    wallet_id: String,
    holder: String,
    ttl: Duration,
}

impl std::fmt::Debug for WalletLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletLease")
            .field("wallet_id", &self.wallet_id)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish()
    }
}

const UPSERT: &str = "INSERT INTO lightning_executor_leases
        (wallet_id, holder, epoch, expires_at_ms, updated_at_ms)
    VALUES ($1, $2, 1, $3 + $4, $3)
    ON CONFLICT (wallet_id) DO UPDATE
        SET epoch = CASE WHEN lightning_executor_leases.holder = excluded.holder
                         THEN lightning_executor_leases.epoch
                         ELSE lightning_executor_leases.epoch + 1 END,
            holder = excluded.holder,
            expires_at_ms = excluded.expires_at_ms,
            updated_at_ms = excluded.updated_at_ms
        WHERE lightning_executor_leases.holder = excluded.holder
           OR lightning_executor_leases.expires_at_ms < $3
    RETURNING epoch";

const RELEASE: &str = "UPDATE lightning_executor_leases SET expires_at_ms = 0, updated_at_ms = $3
    WHERE wallet_id = $1 AND holder = $2";

const HOLDER: &str =
    "SELECT holder, expires_at_ms FROM lightning_executor_leases WHERE wallet_id = $1";

impl WalletLease {
    /// A claim for `wallet_id` by a fresh holder id (one per executor instance).
    pub fn new(journal: AnyJournal, wallet_id: &str, ttl: Duration) -> Self {
        Self {
            journal,
            wallet_id: wallet_id.to_owned(),
            holder: format!("executor-{}", uuid::Uuid::new_v4()),
            ttl,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Takes or renews the lease. `Some(valid_until)` when this process holds it: the instant
    /// (two thirds of the TTL after the statement was sent) until which it may act.
    ///
    /// # Errors
    /// [`LeaseError`] when the database cannot be reached (the caller then does not hold it).
    pub async fn try_acquire(&self) -> Result<Option<Instant>, LeaseError> {
        let sent = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let epoch: Option<i64> = match &self.journal {
            AnyJournal::Postgres(journal) => {
                sqlx::query_scalar(UPSERT)
                    .bind(&self.wallet_id)
                    .bind(&self.holder)
                    .bind(now_ms)
                    .bind(self.ttl_ms())
                    .fetch_optional(journal.pool())
                    .await?
            }
            AnyJournal::Sqlite(journal) => {
                let lock = journal.writer();
                let _guard = lock.lock().await;
                sqlx::query_scalar(UPSERT)
                    .bind(&self.wallet_id)
                    .bind(&self.holder)
                    .bind(now_ms)
                    .bind(self.ttl_ms())
                    .fetch_optional(journal.pool())
                    .await?
            }
        };
        Ok(epoch.map(|_| sent + self.ttl * 2 / 3))
    }

    /// Gives the lease up (a peer may take it at once).
    ///
    /// # Errors
    /// [`LeaseError`] when the database cannot be reached (the lease then expires by itself).
    pub async fn release(&self) -> Result<(), LeaseError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        match &self.journal {
            AnyJournal::Postgres(journal) => {
                sqlx::query(RELEASE)
                    .bind(&self.wallet_id)
                    .bind(&self.holder)
                    .bind(now_ms)
                    .execute(journal.pool())
                    .await?;
            }
            AnyJournal::Sqlite(journal) => {
                let lock = journal.writer();
                let _guard = lock.lock().await;
                sqlx::query(RELEASE)
                    .bind(&self.wallet_id)
                    .bind(&self.holder)
                    .bind(now_ms)
                    .execute(journal.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// The current holder and its expiry (Unix ms), if any row exists.
    ///
    /// # Errors
    /// [`LeaseError`] when the database cannot be reached.
    pub async fn current(&self) -> Result<Option<(String, i64)>, LeaseError> {
        let row: Option<(String, i64)> = match &self.journal {
            AnyJournal::Postgres(journal) => {
                sqlx::query_as(HOLDER)
                    .bind(&self.wallet_id)
                    .fetch_optional(journal.pool())
                    .await?
            }
            AnyJournal::Sqlite(journal) => {
                sqlx::query_as(HOLDER)
                    .bind(&self.wallet_id)
                    .fetch_optional(journal.pool())
                    .await?
            }
        };
        Ok(row)
    }
}

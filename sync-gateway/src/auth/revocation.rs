//! The revocation list: sessions, devices and single tokens (`jti`) refused from now on.
//!
//! Durable in the `sync_revocations` table (PostgreSQL or SQLite) and shared by every node: each
//! node keeps an in-memory copy, reloaded on a fallback poll and, on PostgreSQL, on
//! `NOTIFY openagents_sync_revocations` sent after each revocation commits. Live sessions watch
//! [`Revocations::subscribe`] and re-check their token when it changes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use engine::clock::now_ms;
use engine::Database;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::owners::CredentialOwners;
use super::AuthContext;

/// The PostgreSQL channel that announces new revocations to other nodes.
pub const PG_CHANNEL: &str = "openagents_sync_revocations";

/// What a revocation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    Session,
    Device,
    Jti,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Session => "session",
            RevocationKind::Device => "device",
            RevocationKind::Jti => "jti",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "session" => Some(RevocationKind::Session),
            "device" => Some(RevocationKind::Device),
            "jti" => Some(RevocationKind::Jti),
            _ => None,
        }
    }
}

impl fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub kind: RevocationKind,
    pub subject_id: String,
    /// Tokens issued at or before this instant (unix ms) are refused.
    pub revoked_at_ms: i64,
    /// After this instant (unix ms) no valid token can match any more.
    pub expires_at_ms: i64,
    pub reason: String,
}

/// Failures reading or writing the durable list.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation store query failed")]
    Store(#[from] sqlx::Error),
}

type Key = (RevocationKind, String);

struct Inner {
    /// std RwLock: only in-memory lookups and swaps under it, never an await.
    entries: RwLock<HashMap<Key, Revocation>>,
    /// Bumped whenever the list gains entries. Receivers: live sessions (re-check their token).
    changed: watch::Sender<u64>,
    store: Option<Database>,
    /// Who owns each session, device and token id (on the same store).
    owners: CredentialOwners,
}

/// The node's copy of the revocation list (cheap to clone), optionally backed by the database.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

impl Revocations {
    /// A list kept in memory only (tests, single-process tools).
    pub fn in_memory() -> Self {
        Self::build(None)
    }

    /// A list stored in `db`'s `sync_revocations` table. Call [`Revocations::reload`] (or run
    /// [`Revocations::run_sync`]) to load existing entries.
    pub fn durable(db: Database) -> Self {
        Self::build(Some(db))
    }

    fn build(store: Option<Database>) -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: RwLock::new(HashMap::new()),
                changed: watch::channel(0).0,
                owners: CredentialOwners::new(store.clone()),
                store,
            }),
        }
    }

    /// Who owns each session, device and token id.
    pub fn owners(&self) -> &CredentialOwners {
        &self.inner.owners
    }

    /// Changes whenever new revocations arrive.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Whether `context` is refused, and by what.
    pub fn revoked(&self, context: &AuthContext) -> Option<RevocationKind> {
        let entries = self
            .inner
            .entries
            .read()
            .expect("revocations lock poisoned");
        if entries.is_empty() {
            return None;
        }
        let issued_ms = context.issued_at.saturating_mul(1000);
        if let Some(jti) = &context.jti {
            if entries.contains_key(&(RevocationKind::Jti, jti.clone())) {
                return Some(RevocationKind::Jti);
            }
        }
        for (kind, id) in [
            (RevocationKind::Session, &context.session_id),
            (RevocationKind::Device, &context.device_id),
        ] {
            if let Some(id) = id {
                if let Some(entry) = entries.get(&(kind, id.clone())) {
                    if issued_ms <= entry.revoked_at_ms {
                        return Some(kind);
                    }
                }
            }
        }
        None
    }

    fn merge(&self, revocations: impl IntoIterator<Item = Revocation>, replace: bool) {
        let mut grew = false;
        {
            let mut entries = self
                .inner
                .entries
                .write()
                .expect("revocations lock poisoned");
            let mut fresh: HashMap<Key, Revocation> = HashMap::new();
            for r in revocations {
                let key = (r.kind, r.subject_id.clone());
                match entries.get(&key) {
                    Some(old) if old.revoked_at_ms >= r.revoked_at_ms => {}
                    _ => grew = true,
                }
                fresh.insert(key, r);
            }
            if replace {
                // Keep entries that are only local (not yet visible in a reload) out of caution:
                // a reload never un-revokes anything before it expires.
                let now = now_ms();
                entries.retain(|_, r| r.expires_at_ms > now);
                for (key, r) in fresh {
                    entries.insert(key, r);
                }
            } else {
                entries.extend(fresh);
            }
        }
        if grew {
            self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Revokes `subject_id` of `kind` now: writes it durably (when backed by a database),
    /// announces it to other nodes, and applies it locally at once.
    ///
    /// # Errors
    /// [`RevocationError`] when the database write fails (nothing is applied then).
    pub async fn revoke(
        &self,
        kind: RevocationKind,
        subject_id: &str,
        reason: &str,
        keep_for: Duration,
    ) -> Result<Revocation, RevocationError> {
        let revoked_at_ms = now_ms();
        let keep_ms = i64::try_from(keep_for.as_millis()).unwrap_or(i64::MAX);
        let revocation = Revocation {
            kind,
            subject_id: subject_id.to_owned(),
            revoked_at_ms,
            expires_at_ms: revoked_at_ms.saturating_add(keep_ms),
            reason: reason.to_owned(),
        };
        if let Some(db) = &self.inner.store {
            store::insert(db, &revocation).await?;
        }
        self.merge([revocation.clone()], false);
        Ok(revocation)
    }

    /// Reloads every unexpired revocation from the database and prunes expired rows.
    ///
    /// # Errors
    /// [`RevocationError`] when the database cannot be read.
    pub async fn reload(&self) -> Result<(), RevocationError> {
        let Some(db) = &self.inner.store else {
            return Ok(());
        };
        let now = now_ms();
        let rows = store::load_active(db, now).await?;
        self.merge(rows, true);
        store::prune(db, now).await?;
        if let Err(e) = self.inner.owners.prune(now).await {
            tracing::warn!(error.message = %e, "pruning credential owners failed");
        }
        Ok(())
    }

    /// Keeps this node's copy current until `shutdown`: reloads every `poll`, and at once on a
    /// PostgreSQL notification. Errors are logged and retried on the next tick.
    pub async fn run_sync(self, poll: Duration, shutdown: CancellationToken) {
        let Some(db) = self.inner.store.clone() else {
            return;
        };
        let mut listener = match &db {
            Database::Postgres(pool) => {
                match sqlx::postgres::PgListener::connect_with(pool).await {
                    Ok(mut l) => match l.listen(PG_CHANNEL).await {
                        Ok(()) => Some(l),
                        Err(e) => {
                            tracing::warn!(error.message = %e, "cannot LISTEN for revocations; polling only");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error.message = %e, "cannot LISTEN for revocations; polling only");
                        None
                    }
                }
            }
            Database::Sqlite { .. } => None,
        };
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                notice = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = notice {
                        tracing::warn!(error.message = %e, "revocation listener failed; polling only");
                        listener = None;
                    }
                }
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error.message = %e, error.cause_chain = ?e, "reloading revocations failed");
            }
        }
    }

    /// Every entry in this node's copy (for tests and diagnostics).
    pub fn snapshot(&self) -> Vec<Revocation> {
        let entries = self
            .inner
            .entries
            .read()
            .expect("revocations lock poisoned");
        let mut all: Vec<Revocation> = entries.values().cloned().collect();
        all.sort_by(|a, b| (a.kind.as_str(), &a.subject_id).cmp(&(b.kind.as_str(), &b.subject_id)));
        all
    }
}

/// SQL for both backends (runtime-checked queries, each exercised by the tests below).
mod store {
    use super::*;

    pub async fn insert(db: &Database, r: &Revocation) -> Result<(), sqlx::Error> {
        match db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO sync_revocations (kind, subject_id, revoked_at_ms, expires_at_ms, reason)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (kind, subject_id) DO UPDATE SET
                       revoked_at_ms = GREATEST(sync_revocations.revoked_at_ms, EXCLUDED.revoked_at_ms),
                       expires_at_ms = GREATEST(sync_revocations.expires_at_ms, EXCLUDED.expires_at_ms),
                       reason = EXCLUDED.reason",
                )
                .bind(r.kind.as_str())
                .bind(&r.subject_id)
                .bind(r.revoked_at_ms)
                .bind(r.expires_at_ms)
                .bind(&r.reason)
                .execute(&mut *tx)
                .await?;
                // Delivered only after commit, so other nodes reload a committed list.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(PG_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query(
                    "INSERT INTO sync_revocations (kind, subject_id, revoked_at_ms, expires_at_ms, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (kind, subject_id) DO UPDATE SET
                       revoked_at_ms = MAX(sync_revocations.revoked_at_ms, excluded.revoked_at_ms),
                       expires_at_ms = MAX(sync_revocations.expires_at_ms, excluded.expires_at_ms),
                       reason = excluded.reason",
                )
                .bind(r.kind.as_str())
                .bind(&r.subject_id)
                .bind(r.revoked_at_ms)
                .bind(r.expires_at_ms)
                .bind(&r.reason)
                .execute(pool)
                .await
                .map(|_| ())
            }
        }
    }

    fn from_row<R: Row>(row: &R) -> Option<Revocation>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        let kind: String = row.try_get("kind").ok()?;
        Some(Revocation {
            kind: RevocationKind::parse(&kind)?,
            subject_id: row.try_get("subject_id").ok()?,
            revoked_at_ms: row.try_get("revoked_at_ms").ok()?,
            expires_at_ms: row.try_get("expires_at_ms").ok()?,
            reason: row.try_get("reason").ok()?,
        })
    }

    const LOAD: &str = "SELECT kind, subject_id, revoked_at_ms, expires_at_ms, reason
                        FROM sync_revocations WHERE expires_at_ms > $1";

    pub async fn load_active(db: &Database, now_ms: i64) -> Result<Vec<Revocation>, sqlx::Error> {
        Ok(match db {
            Database::Postgres(pool) => sqlx::query(LOAD)
                .bind(now_ms)
                .fetch_all(pool)
                .await?
                .iter()
                .filter_map(from_row)
                .collect(),
            Database::Sqlite { pool, .. } => sqlx::query(LOAD)
                .bind(now_ms)
                .fetch_all(pool)
                .await?
                .iter()
                .filter_map(from_row)
                .collect(),
        })
    }

    const PRUNE: &str = "DELETE FROM sync_revocations WHERE expires_at_ms <= $1";

    pub async fn prune(db: &Database, now_ms: i64) -> Result<(), sqlx::Error> {
        match db {
            Database::Postgres(pool) => sqlx::query(PRUNE)
                .bind(now_ms)
                .execute(pool)
                .await
                .map(|_| ()),
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query(PRUNE)
                    .bind(now_ms)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;

    fn context(session: &str, device: &str, jti: &str, issued_at: i64) -> AuthContext {
        AuthContext {
            subject: "user:1".into(),
            principal: Principal::default(),
            device_id: Some(device.into()),
            session_id: Some(session.into()),
            jti: Some(jti.into()),
            issued_at,
            expires_at: issued_at + 300,
            scopes: vec![],
            topics: None,
        }
    }

    async fn durable_list_is_shared_and_refuses_only_older_tokens(db: Database) {
        let node_a = Revocations::durable(db.clone());
        let node_b = Revocations::durable(db.clone());
        let mut changed = node_b.subscribe();
        let issued = chrono::Utc::now().timestamp() - 10;
        assert_eq!(node_a.revoked(&context("s1", "d1", "j1", issued)), None);

        node_a
            .revoke(
                RevocationKind::Session,
                "s1",
                "logout",
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        node_a
            .revoke(
                RevocationKind::Jti,
                "j2",
                "leaked",
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert_eq!(
            node_a.revoked(&context("s1", "d1", "j1", issued)),
            Some(RevocationKind::Session)
        );
        // Node B learns it from the database.
        assert_eq!(node_b.revoked(&context("s1", "d1", "j1", issued)), None);
        node_b.reload().await.unwrap();
        assert!(changed.has_changed().unwrap());
        changed.mark_unchanged();
        assert_eq!(
            node_b.revoked(&context("s1", "d1", "j1", issued)),
            Some(RevocationKind::Session)
        );
        assert_eq!(
            node_b.revoked(&context("s9", "d9", "j2", issued)),
            Some(RevocationKind::Jti)
        );
        // A token issued after the revocation (a new login) is fine.
        let later = chrono::Utc::now().timestamp() + 5;
        assert_eq!(node_b.revoked(&context("s1", "d1", "j3", later)), None);

        // Revoking a device by a second node; expired rows are pruned on reload.
        node_b
            .revoke(
                RevocationKind::Device,
                "d7",
                "lost phone",
                Duration::from_millis(0),
            )
            .await
            .unwrap();
        changed.mark_unchanged();
        node_a.reload().await.unwrap();
        assert!(node_a.snapshot().iter().all(|r| r.subject_id != "d7"));
        // Reload again: nothing new, no change signalled.
        node_b.reload().await.unwrap();
        assert!(!changed.has_changed().unwrap());
    }

    #[tokio::test]
    async fn durable_list_on_sqlite() {
        let db = engine::testing::TestDb::sqlite().await;
        durable_list_is_shared_and_refuses_only_older_tokens(db.database.clone()).await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn durable_list_on_postgres() {
        let Some(db) = engine::testing::TestDb::postgres_with(2).await else {
            return;
        };
        durable_list_is_shared_and_refuses_only_older_tokens(db.database.clone()).await;
        db.cleanup().await;
    }
}

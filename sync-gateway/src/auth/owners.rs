//! Who owns a sync session, device or token id: recorded when the runtime mints a token
//! (`POST /api/sync/token`) or first sees a verified token that names it (a token the control
//! plane minted itself, on a socket upgrade or a hydration), consulted when someone asks to
//! revoke one. A principal revokes only
//! what belongs to it; the operator revokes anything (docs/security.md, "Revocation").
//!
//! Durable in `sync_credential_owners` (both backends), first writer wins: a session or device
//! id recorded for one subject cannot be minted for another. A row lives as long as a token that
//! names it could still be accepted, and each mint extends it; expired rows are pruned on write.

use std::collections::HashMap;
use std::sync::Mutex;

use engine::Database;

use super::RevocationKind;

/// Failures reading or writing the registry.
#[derive(Debug, thiserror::Error)]
pub enum OwnersError {
    #[error("credential owner store query failed")]
    Store(#[from] sqlx::Error),
    #[error("recording the operator action in the journal failed: {0}")]
    Journal(String),
}

/// One operator action on another principal's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorActionRecord {
    pub at_ms: i64,
    /// `mint` or `revoke`.
    pub action: String,
    pub actor: String,
    pub subject: String,
    /// Compact JSON (never a token or a secret).
    pub detail: String,
}

/// Where operator actions are recorded. `serve` sets the runtime's journal (an
/// `operator_action` event per action, under the journal's hash chains and Merkle tree); a
/// gateway without a journal (standalone tools, unit tests) records them in the
/// `sync_operator_actions` table of its store instead.
#[async_trait::async_trait]
pub trait OperatorLog: Send + Sync + 'static {
    /// Durably records `record` before returning.
    async fn record(&self, record: &OperatorActionRecord) -> Result<(), String>;
}

/// The registry (in memory for tests and single-process tools, else durable).
pub struct CredentialOwners {
    store: Option<Database>,
    /// In-memory entries when there is no store: (kind, id) -> (owner, expires_at_ms).
    memory: Mutex<HashMap<(RevocationKind, String), (String, i64)>>,
    /// Ids recorded on sight recently, with the expiry recorded: a token reconnecting or
    /// hydrating again costs no write. Bounded: emptied when it reaches [`SEEN_CAPACITY`].
    seen: Mutex<HashMap<(RevocationKind, String), i64>>,
    /// The journal operator actions go to, once `serve` sets it.
    operator_log: std::sync::OnceLock<std::sync::Arc<dyn OperatorLog>>,
}

/// Entries the on-sight cache holds before it starts over.
const SEEN_CAPACITY: usize = 16_384;

/// The owner recorded for a session, device or token id: the subject and its tenant (a user's
/// session in one org is not theirs to revoke with another org's token).
pub fn credential_owner(subject: &str, org: Option<&str>) -> String {
    match org {
        Some(org) => format!("{subject}|org:{org}"),
        None => subject.to_owned(),
    }
}

impl CredentialOwners {
    pub fn new(store: Option<Database>) -> Self {
        Self {
            store,
            memory: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            operator_log: std::sync::OnceLock::new(),
        }
    }

    /// Sends operator actions to `log` (the runtime's journal) from now on. Set once.
    pub fn set_operator_log(&self, log: std::sync::Arc<dyn OperatorLog>) {
        let _ = self.operator_log.set(log);
    }

    /// Records the owner of the session, device and token ids a verified token names, if none
    /// is recorded yet (first owner wins), until `expires_at_ms`. A token naming an id another
    /// principal holds is still the control plane's signed word, so it is not refused here; the
    /// conflict is logged and the id stays with its first owner.
    ///
    /// # Errors
    /// [`OwnersError`] when the database fails.
    pub async fn note_seen(
        &self,
        auth: &super::AuthContext,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), OwnersError> {
        let owner = credential_owner(&auth.subject, auth.principal.org_id.as_deref());
        for (kind, id) in [
            (RevocationKind::Session, &auth.session_id),
            (RevocationKind::Device, &auth.device_id),
            (RevocationKind::Jti, &auth.jti),
        ] {
            let Some(id) = id.as_deref() else { continue };
            let key = (kind, id.to_owned());
            let fresh = self
                .seen
                .lock()
                .expect("seen lock poisoned")
                .get(&key)
                .is_some_and(|exp| *exp >= expires_at_ms);
            if fresh {
                continue;
            }
            let holder = self.claim(kind, id, &owner, now_ms, expires_at_ms).await?;
            if holder != owner {
                tracing::warn!(kind = kind.as_str(), "a verified sync token names a credential id another principal owns; it stays with its first owner");
            }
            let mut seen = self.seen.lock().expect("seen lock poisoned");
            if seen.len() >= SEEN_CAPACITY {
                seen.clear();
            }
            seen.insert(key, expires_at_ms);
        }
        Ok(())
    }

    /// Records `owner` for `(kind, id)` until `expires_at_ms` unless another owner holds it, and
    /// returns the owner that holds it now (`owner` itself when recorded or already held).
    ///
    /// # Errors
    /// [`OwnersError`] when the database fails.
    pub async fn claim(
        &self,
        kind: RevocationKind,
        id: &str,
        owner: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<String, OwnersError> {
        let Some(db) = &self.store else {
            let mut memory = self.memory.lock().expect("owners lock poisoned");
            memory.retain(|_, (_, exp)| *exp > now_ms);
            let entry = memory
                .entry((kind, id.to_owned()))
                .or_insert_with(|| (owner.to_owned(), expires_at_ms));
            if entry.0 == owner {
                entry.1 = entry.1.max(expires_at_ms);
            }
            return Ok(entry.0.clone());
        };
        // An expired row no longer binds: whoever claims it next owns it.
        const PG: &str =
            "INSERT INTO sync_credential_owners (kind, subject_id, owner, expires_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, subject_id) DO UPDATE SET
               owner = CASE WHEN sync_credential_owners.expires_at_ms <= $5 THEN EXCLUDED.owner
                            ELSE sync_credential_owners.owner END,
               expires_at_ms = CASE
                 WHEN sync_credential_owners.expires_at_ms <= $5
                   OR sync_credential_owners.owner = EXCLUDED.owner
                 THEN GREATEST(sync_credential_owners.expires_at_ms, EXCLUDED.expires_at_ms)
                 ELSE sync_credential_owners.expires_at_ms END
             RETURNING owner";
        const SQLITE: &str =
            "INSERT INTO sync_credential_owners (kind, subject_id, owner, expires_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, subject_id) DO UPDATE SET
               owner = CASE WHEN sync_credential_owners.expires_at_ms <= $5 THEN excluded.owner
                            ELSE sync_credential_owners.owner END,
               expires_at_ms = CASE
                 WHEN sync_credential_owners.expires_at_ms <= $5
                   OR sync_credential_owners.owner = excluded.owner
                 THEN MAX(sync_credential_owners.expires_at_ms, excluded.expires_at_ms)
                 ELSE sync_credential_owners.expires_at_ms END
             RETURNING owner";
        let holder: String = match db {
            Database::Postgres(pool) => {
                sqlx::query_scalar(PG)
                    .bind(kind.as_str())
                    .bind(id)
                    .bind(owner)
                    .bind(expires_at_ms)
                    .bind(now_ms)
                    .fetch_one(pool)
                    .await?
            }
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query_scalar(SQLITE)
                    .bind(kind.as_str())
                    .bind(id)
                    .bind(owner)
                    .bind(expires_at_ms)
                    .bind(now_ms)
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(holder)
    }

    /// The current owner of `(kind, id)`, if recorded and not expired.
    ///
    /// # Errors
    /// [`OwnersError`] when the database fails.
    pub async fn owner_of(
        &self,
        kind: RevocationKind,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<String>, OwnersError> {
        let Some(db) = &self.store else {
            let memory = self.memory.lock().expect("owners lock poisoned");
            return Ok(memory
                .get(&(kind, id.to_owned()))
                .filter(|(_, exp)| *exp > now_ms)
                .map(|(owner, _)| owner.clone()));
        };
        const SELECT: &str = "SELECT owner FROM sync_credential_owners
             WHERE kind = $1 AND subject_id = $2 AND expires_at_ms > $3";
        Ok(match db {
            Database::Postgres(pool) => {
                sqlx::query_scalar(SELECT)
                    .bind(kind.as_str())
                    .bind(id)
                    .bind(now_ms)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Sqlite { pool, .. } => {
                sqlx::query_scalar(SELECT)
                    .bind(kind.as_str())
                    .bind(id)
                    .bind(now_ms)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }

    /// Appends what the operator did for another principal (`action` is `mint` or `revoke`).
    ///
    /// # Errors
    /// [`OwnersError`] when the database fails (the caller then refuses the action).
    pub async fn record_operator_action(
        &self,
        now_ms: i64,
        action: &str,
        actor: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), OwnersError> {
        if let Some(log) = self.operator_log.get() {
            let record = OperatorActionRecord {
                at_ms: now_ms,
                action: action.to_owned(),
                actor: actor.to_owned(),
                subject: subject.to_owned(),
                detail: detail.to_owned(),
            };
            return log.record(&record).await.map_err(OwnersError::Journal);
        }
        let Some(db) = &self.store else {
            return Ok(());
        };
        const INSERT: &str =
            "INSERT INTO sync_operator_actions (at_ms, action, actor, subject, detail)
             VALUES ($1, $2, $3, $4, $5)";
        match db {
            Database::Postgres(pool) => {
                sqlx::query(INSERT)
                    .bind(now_ms)
                    .bind(action)
                    .bind(actor)
                    .bind(subject)
                    .bind(detail)
                    .execute(pool)
                    .await?;
            }
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query(INSERT)
                    .bind(now_ms)
                    .bind(action)
                    .bind(actor)
                    .bind(subject)
                    .bind(detail)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes expired rows. Returns how many.
    ///
    /// # Errors
    /// [`OwnersError`] when the database fails.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, OwnersError> {
        let Some(db) = &self.store else {
            let mut memory = self.memory.lock().expect("owners lock poisoned");
            let before = memory.len();
            memory.retain(|_, (_, exp)| *exp > now_ms);
            return Ok((before - memory.len()) as u64);
        };
        const DELETE: &str = "DELETE FROM sync_credential_owners WHERE expires_at_ms <= $1";
        Ok(match db {
            Database::Postgres(pool) => sqlx::query(DELETE)
                .bind(now_ms)
                .execute(pool)
                .await?
                .rows_affected(),
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query(DELETE)
                    .bind(now_ms)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_owner_wins_until_its_row_expires() {
        let owners = CredentialOwners::new(None);
        let s = RevocationKind::Session;
        assert_eq!(
            owners.claim(s, "s1", "user:1", 0, 100).await.unwrap(),
            "user:1"
        );
        assert_eq!(
            owners.claim(s, "s1", "user:2", 10, 200).await.unwrap(),
            "user:1"
        );
        assert_eq!(
            owners.owner_of(s, "s1", 50).await.unwrap().as_deref(),
            Some("user:1")
        );
        assert_eq!(owners.owner_of(s, "s1", 100).await.unwrap(), None);
        assert_eq!(
            owners.claim(s, "s1", "user:2", 150, 300).await.unwrap(),
            "user:2"
        );
        assert_eq!(
            owners
                .owner_of(RevocationKind::Device, "s1", 0)
                .await
                .unwrap(),
            None
        );
    }
}

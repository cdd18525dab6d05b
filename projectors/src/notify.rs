//! Stream-head notifications: who gets woken when a projector committed stream rows.
//!
//! In-process, [`SyncNotifier::committed`] bumps a `watch` counter that the gateway's tailers
//! wait on. Across processes sharing a PostgreSQL database, [`run_pg_relay`] sends one
//! `NOTIFY openagents_sync` per burst of local commits, *after* they committed, and bumps the
//! counter when a peer's notice arrives, so a gateway node that does not project still delivers
//! at once. Notices are only wake-ups (readers re-read the store), so a lost one costs latency
//! up to the readers' fallback poll, never correctness.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL channel carrying stream-head notices.
pub const PG_CHANNEL: &str = "openagents_sync";

/// The process-wide stream-head hub. Share one per process (`Arc`).
pub struct SyncNotifier {
    heads: watch::Sender<u64>,
    /// Topics committed locally and not yet announced to peers.
    outbox: Mutex<BTreeSet<String>>,
    outbox_ready: Notify,
    instance: String,
}

#[derive(Serialize, Deserialize)]
struct WireNotice {
    from: String,
    topics: Vec<String>,
}

impl Default for SyncNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncNotifier {
    pub fn new() -> Self {
        Self {
            heads: watch::channel(0).0,
            outbox: Mutex::new(BTreeSet::new()),
            outbox_ready: Notify::new(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Called after a commit that appended rows to `topic`.
    pub fn committed(&self, topic: &str) {
        {
            // std Mutex: held only to insert into a set, never across an await.
            let mut outbox = self.outbox.lock().expect("outbox lock poisoned");
            outbox.insert(topic.to_owned());
        }
        self.outbox_ready.notify_one();
        self.bump();
    }

    fn bump(&self) {
        self.heads.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever some topic's head may have moved (in this process or,
    /// with the relay running, in a peer).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.heads.subscribe()
    }

    fn take_outbox(&self) -> Option<WireNotice> {
        let mut outbox = self.outbox.lock().expect("outbox lock poisoned");
        if outbox.is_empty() {
            return None;
        }
        let topics = std::mem::take(&mut *outbox).into_iter().collect();
        Some(WireNotice {
            from: self.instance.clone(),
            topics,
        })
    }

    fn receive_remote(&self, payload: &str) {
        match serde_json::from_str::<WireNotice>(payload) {
            Ok(notice) if notice.from == self.instance => {}
            Ok(_) => self.bump(),
            Err(_) => {
                tracing::warn!(payload, "ignoring malformed sync notification");
                self.bump();
            }
        }
    }
}

/// Relays stream-head notices between processes through PostgreSQL `LISTEN`/`NOTIFY` until
/// `shutdown` is cancelled; reconnects with backoff and announces a wake-up after every
/// (re)connect, because notices sent while away are lost.
pub async fn run_pg_relay(pool: PgPool, notifier: Arc<SyncNotifier>, shutdown: CancellationToken) {
    let sender = {
        let pool = pool.clone();
        let notifier = notifier.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = notifier.outbox_ready.notified() => {}
                }
                while let Some(notice) = notifier.take_outbox() {
                    let payload = serde_json::to_string(&notice).expect("notice serialises");
                    if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(PG_CHANNEL)
                        .bind(&payload)
                        .execute(&pool)
                        .await
                    {
                        tracing::warn!(error.message = %error, "sync NOTIFY failed; peers fall back to polling");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        }
    };
    let listener = async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(error.message = %error, "sync LISTEN connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if let Err(error) = listener.listen(PG_CHANNEL).await {
                tracing::warn!(error.message = %error, "sync LISTEN failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
            backoff = Duration::from_millis(100);
            notifier.bump();
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(notification)) => notifier.receive_remote(notification.payload()),
                    Ok(None) => notifier.bump(),
                    Err(error) => {
                        tracing::warn!(error.message = %error, "sync LISTEN connection lost");
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(sender, listener);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_topics_and_ignores_its_own_notices() {
        let hub = SyncNotifier::new();
        let heads = hub.subscribe();
        hub.committed("runtime.run_summaries");
        hub.committed("runtime.run_summaries");
        hub.committed("runtime.payments");
        assert_eq!(*heads.borrow(), 3);
        let notice = hub.take_outbox().unwrap();
        assert_eq!(notice.topics, ["runtime.payments", "runtime.run_summaries"]);
        assert!(hub.take_outbox().is_none());
        let own = serde_json::to_string(&notice).unwrap();
        hub.receive_remote(&own);
        assert_eq!(*heads.borrow(), 3);
        let peer = SyncNotifier::new();
        peer.committed("runtime.payments");
        hub.receive_remote(&serde_json::to_string(&peer.take_outbox().unwrap()).unwrap());
        assert_eq!(*heads.borrow(), 4);
    }
}

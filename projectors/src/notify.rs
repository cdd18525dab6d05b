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

use engine::notify::{run_listen_notify, RelayEndpoint};
use serde::{Deserialize, Serialize};
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

impl RelayEndpoint for SyncNotifier {
    fn channel(&self) -> &'static str {
        PG_CHANNEL
    }

    fn outbox_ready(&self) -> &Notify {
        &self.outbox_ready
    }

    fn take_outbox(&self) -> Option<String> {
        SyncNotifier::take_outbox(self)
            .map(|notice| serde_json::to_string(&notice).expect("notice serialises"))
    }

    fn receive(&self, payload: Option<&str>) {
        match payload {
            Some(payload) => self.receive_remote(payload),
            None => self.bump(),
        }
    }
}

/// Relays stream-head notices between processes through PostgreSQL `LISTEN`/`NOTIFY` on
/// channel `openagents_sync` until `shutdown` is cancelled (`engine::notify::run_listen_notify`).
pub async fn run_pg_relay(pool: PgPool, notifier: Arc<SyncNotifier>, shutdown: CancellationToken) {
    run_listen_notify(pool, notifier, shutdown).await;
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

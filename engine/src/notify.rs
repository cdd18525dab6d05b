//! Commit notifications: who gets woken when the journal grows.
//!
//! In-process, every successful append publishes an [`AggregateChanged`] on a broadcast channel
//! (SSE streams filter for their aggregate) and bumps a `watch` counter (projectors wake up).
//! Across processes sharing a PostgreSQL database, [`run_pg_relay`] sends one `NOTIFY` per burst
//! of local commits, *after* they committed (a `NOTIFY` inside the append transaction would
//! serialise every commit on the notification queue lock), and republishes other processes'
//! notices locally. Notifications are only wake-ups: every consumer re-reads the journal, so a
//! lost notice costs latency (bounded by the consumers' fallback polls), never correctness.
//! [`CommitStamps`] carries stream commits' times from projectors to the gateway's tailer for
//! the live path's stage timings (`docs/operations.md`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL channel carrying journal notices between runtime processes.
pub const PG_CHANNEL: &str = "openagents_journal";
/// Largest NOTIFY payload we send; beyond this a burst is announced as "everything changed".
const MAX_PAYLOAD_BYTES: usize = 7_000;
/// Capacity of the in-process broadcast; a receiver that falls further behind sees `Lagged`
/// and must treat it as "anything may have changed".
const BROADCAST_CAPACITY: usize = 4_096;

/// An aggregate moved to `last_sequence`, or (`All`) unknown aggregates changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggregateChanged {
    One {
        aggregate_type: String,
        aggregate_id: String,
        last_sequence: u64,
    },
    /// Notices were lost or coalesced: every listener should re-check.
    All,
}

impl AggregateChanged {
    /// Whether a listener for `(aggregate_type, aggregate_id)` should re-read.
    pub fn concerns(&self, aggregate_type: &str, aggregate_id: &str) -> bool {
        match self {
            AggregateChanged::One {
                aggregate_type: t,
                aggregate_id: i,
                ..
            } => t == aggregate_type && i == aggregate_id,
            AggregateChanged::All => true,
        }
    }
}

#[derive(Default)]
struct Outbox {
    changes: Vec<AggregateChanged>,
    bytes: usize,
    overflow: bool,
}

/// The process-wide notification hub. Create one per process and share it (`Arc`).
pub struct JournalNotifier {
    /// Per-aggregate notices. Senders: [`JournalNotifier::publish`] and the relay. Receivers: SSE
    /// streams. No receivers is fine (send errors are ignored).
    changes: broadcast::Sender<AggregateChanged>,
    /// Counts appends seen by this process (local and remote). Projector runners wait on it.
    appended: watch::Sender<u64>,
    /// Local notices not yet sent to other processes; drained by [`run_pg_relay`].
    outbox: Mutex<Outbox>,
    /// Wakes the relay when the outbox gains entries.
    outbox_ready: Notify,
    /// Identifies this process in NOTIFY payloads so it can ignore its own.
    instance: String,
}

#[derive(Serialize, Deserialize)]
struct WireNotice {
    from: String,
    /// `None` means "everything" (overflow).
    changes: Option<Vec<(String, String, u64)>>,
}

impl Default for JournalNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl JournalNotifier {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (appended, _) = watch::channel(0);
        Self {
            changes,
            appended,
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Notify::new(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Called by the engine after an append committed.
    pub fn publish(&self, aggregate_type: &str, aggregate_id: &str, last_sequence: u64) {
        let change = AggregateChanged::One {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            last_sequence,
        };
        {
            // std Mutex: held only to push onto a Vec, never across an await.
            let mut outbox = self.outbox.lock().expect("outbox lock poisoned");
            if !outbox.overflow {
                outbox.bytes += aggregate_type.len() + aggregate_id.len() + 32;
                if outbox.bytes > MAX_PAYLOAD_BYTES {
                    outbox.overflow = true;
                    outbox.changes.clear();
                } else {
                    outbox.changes.push(change.clone());
                }
            }
        }
        self.outbox_ready.notify_one();
        self.deliver_locally(change);
    }

    fn deliver_locally(&self, change: AggregateChanged) {
        let _ = self.changes.send(change);
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Subscribes to per-aggregate notices.
    pub fn subscribe(&self) -> broadcast::Receiver<AggregateChanged> {
        self.changes.subscribe()
    }

    /// A receiver that changes whenever the journal grew (any aggregate, any process).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    fn take_outbox(&self) -> Option<WireNotice> {
        let mut outbox = self.outbox.lock().expect("outbox lock poisoned");
        if !outbox.overflow && outbox.changes.is_empty() {
            return None;
        }
        let taken = std::mem::take(&mut *outbox);
        drop(outbox);
        let changes = if taken.overflow {
            None
        } else {
            Some(
                taken
                    .changes
                    .into_iter()
                    .filter_map(|c| match c {
                        AggregateChanged::One {
                            aggregate_type,
                            aggregate_id,
                            last_sequence,
                        } => Some((aggregate_type, aggregate_id, last_sequence)),
                        AggregateChanged::All => None,
                    })
                    .collect(),
            )
        };
        Some(WireNotice {
            from: self.instance.clone(),
            changes,
        })
    }

    fn receive_remote(&self, payload: &str) {
        let Ok(notice) = serde_json::from_str::<WireNotice>(payload) else {
            tracing::warn!(payload, "ignoring malformed journal notification");
            self.deliver_locally(AggregateChanged::All);
            return;
        };
        if notice.from == self.instance {
            return;
        }
        match notice.changes {
            Some(changes) => {
                for (aggregate_type, aggregate_id, last_sequence) in changes {
                    self.deliver_locally(AggregateChanged::One {
                        aggregate_type,
                        aggregate_id,
                        last_sequence,
                    });
                }
            }
            None => self.deliver_locally(AggregateChanged::All),
        }
    }
}

/// One process's side of a `LISTEN`/`NOTIFY` relay: what it announces after its own commits and
/// what it does with its peers' notices. [`JournalNotifier`] and the projectors' stream-head
/// notifier are the two.
pub trait RelayEndpoint: Send + Sync + 'static {
    /// The PostgreSQL channel.
    fn channel(&self) -> &'static str;
    /// Notified when [`RelayEndpoint::take_outbox`] has something.
    fn outbox_ready(&self) -> &Notify;
    /// The next payload to `NOTIFY` (sent after the commits it announces), if any.
    fn take_outbox(&self) -> Option<String>;
    /// A peer's payload; `None` after a (re)connect, when notices may have been lost.
    fn receive(&self, payload: Option<&str>);
}

/// Relays `endpoint`'s notices between processes through PostgreSQL `LISTEN`/`NOTIFY` until
/// `shutdown` is cancelled. Reconnects with backoff; after every (re)connect the endpoint hears
/// `receive(None)`, because notices sent while it was away are lost.
///
/// # Cancel safety
/// Returns promptly once `shutdown` is cancelled; pending local notices are dropped (peers fall
/// back to polling).
pub async fn run_listen_notify<E: RelayEndpoint>(
    pool: PgPool,
    endpoint: std::sync::Arc<E>,
    shutdown: CancellationToken,
) {
    let channel = endpoint.channel();
    let sender = {
        let pool = pool.clone();
        let endpoint = endpoint.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut backoff =
                crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = endpoint.outbox_ready().notified() => {}
                }
                while let Some(payload) = endpoint.take_outbox() {
                    if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(channel)
                        .bind(&payload)
                        .execute(&pool)
                        .await
                    {
                        tracing::warn!(channel, error.message = %error, "NOTIFY failed; peers fall back to polling");
                        if !backoff.sleep(&shutdown).await {
                            return;
                        }
                    } else {
                        backoff.reset();
                    }
                }
            }
        }
    };
    let listener = async move {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let connected = match PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen(channel).await {
                    Ok(()) => Some(listener),
                    Err(error) => {
                        tracing::warn!(channel, error.message = %error, "LISTEN failed");
                        None
                    }
                },
                Err(error) => {
                    tracing::warn!(channel, error.message = %error, "LISTEN connection failed");
                    None
                }
            };
            let Some(mut listener) = connected else {
                if !backoff.sleep(&shutdown).await {
                    return;
                }
                continue;
            };
            backoff.reset();
            // Anything may have happened while we were not listening.
            endpoint.receive(None);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(notification)) => endpoint.receive(Some(notification.payload())),
                    // The connection dropped; sqlx reconnects on the next call, notices in between
                    // are lost.
                    Ok(None) => endpoint.receive(None),
                    Err(error) => {
                        tracing::warn!(channel, error.message = %error, "LISTEN connection lost");
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(sender, listener);
}

impl RelayEndpoint for JournalNotifier {
    fn channel(&self) -> &'static str {
        PG_CHANNEL
    }

    fn outbox_ready(&self) -> &Notify {
        &self.outbox_ready
    }

    fn take_outbox(&self) -> Option<String> {
        JournalNotifier::take_outbox(self)
            .map(|notice| serde_json::to_string(&notice).expect("notice serialises"))
    }

    fn receive(&self, payload: Option<&str>) {
        match payload {
            Some(payload) => self.receive_remote(payload),
            None => self.deliver_locally(AggregateChanged::All),
        }
    }
}

/// Relays journal notices between processes ([`run_listen_notify`] on channel
/// `openagents_journal`).
pub async fn run_pg_relay(
    pool: PgPool,
    notifier: std::sync::Arc<JournalNotifier>,
    shutdown: CancellationToken,
) {
    run_listen_notify(pool, notifier, shutdown).await;
}

/// Stage timings of the live path, commit → socket (instrumentation only: nothing reads these
/// for correctness). A projector records when it committed a topic's stream rows; the reader
/// of that topic in the same process (the gateway's tailer) takes the stamps of the rows it has
/// read and times commit → read. Bounded per topic, so a process that projects a topic nobody
/// reads keeps only the newest stamps.
pub struct CommitStamps {
    /// Per topic: `(first watermark of a batch, when it committed)`, oldest first.
    topics: Mutex<HashMap<String, VecDeque<(u64, Instant)>>>,
}

/// Stamps kept per topic at most.
const COMMIT_STAMPS_PER_TOPIC: usize = 1_024;

impl CommitStamps {
    /// The process-wide stamps.
    pub fn global() -> &'static CommitStamps {
        static STAMPS: OnceLock<CommitStamps> = OnceLock::new();
        STAMPS.get_or_init(|| CommitStamps {
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// Rows from `first` on were committed on `topic` just now.
    pub fn committed(&self, topic: &str, first: u64) {
        let now = Instant::now();
        // std Mutex: held for a push, never across an await.
        let mut topics = self.topics.lock().expect("commit stamps lock poisoned");
        let stamps = match topics.get_mut(topic) {
            Some(stamps) => stamps,
            None => topics.entry(topic.to_owned()).or_default(),
        };
        if stamps.len() >= COMMIT_STAMPS_PER_TOPIC {
            stamps.pop_front();
        }
        stamps.push_back((first, now));
    }

    /// Takes the commit times of the batches on `topic` whose first row is at or below
    /// `through` (the reader now holds them), oldest first.
    pub fn read_through(&self, topic: &str, through: u64) -> Vec<Instant> {
        let mut topics = self.topics.lock().expect("commit stamps lock poisoned");
        let Some(stamps) = topics.get_mut(topic) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while let Some(&(first, at)) = stamps.front() {
            if first > through {
                break;
            }
            stamps.pop_front();
            taken.push(at);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_takes_the_commit_stamps_of_the_rows_it_read_and_no_later_ones() {
        let stamps = CommitStamps::global();
        let topic = "test.commit_stamps";
        stamps.committed(topic, 1);
        stamps.committed(topic, 3);
        stamps.committed(topic, 6);
        assert!(stamps.read_through("test.unknown", 10).is_empty());
        assert_eq!(
            stamps.read_through(topic, 4).len(),
            2,
            "batches from 1 and 3"
        );
        assert!(stamps.read_through(topic, 4).is_empty(), "taken once");
        assert_eq!(stamps.read_through(topic, 6).len(), 1);
        for first in 0..(COMMIT_STAMPS_PER_TOPIC as u64 + 5) {
            stamps.committed(topic, 100 + first);
        }
        assert_eq!(
            stamps.read_through(topic, u64::MAX).len(),
            COMMIT_STAMPS_PER_TOPIC,
            "bounded when nobody reads"
        );
    }

    #[test]
    fn publishes_locally_and_queues_for_peers() {
        let hub = JournalNotifier::new();
        let mut rx = hub.subscribe();
        let appended = hub.appended();
        hub.publish("run", "r1", 3);
        assert_eq!(
            rx.try_recv().unwrap(),
            AggregateChanged::One {
                aggregate_type: "run".into(),
                aggregate_id: "r1".into(),
                last_sequence: 3
            }
        );
        assert_eq!(*appended.borrow(), 1);
        let notice = hub.take_outbox().unwrap();
        assert_eq!(
            notice.changes.unwrap(),
            vec![("run".to_owned(), "r1".to_owned(), 3)]
        );
        assert!(hub.take_outbox().is_none());
    }

    #[test]
    fn a_burst_too_large_for_one_notify_becomes_all() {
        let hub = JournalNotifier::new();
        for i in 0..1_000 {
            hub.publish("run", &format!("run-{i}"), 1);
        }
        let notice = hub.take_outbox().unwrap();
        assert!(notice.changes.is_none());
    }

    #[test]
    fn ignores_its_own_notices_and_relays_peers() {
        let hub = JournalNotifier::new();
        let peer = JournalNotifier::new();
        peer.publish("worker", "w1", 9);
        let wire = serde_json::to_string(&peer.take_outbox().unwrap()).unwrap();
        let mut rx = hub.subscribe();
        hub.receive_remote(&wire);
        assert!(rx.try_recv().unwrap().concerns("worker", "w1"));
        // Its own notice comes back through PostgreSQL too, and is dropped.
        hub.publish("run", "r", 1);
        let _ = rx.try_recv();
        let own = serde_json::to_string(&hub.take_outbox().unwrap()).unwrap();
        hub.receive_remote(&own);
        assert!(rx.try_recv().is_err());
    }
}

//! The gateway's shared state: configuration, the source, the token verifier, one tailer per
//! known topic, the connection limit, the task tracker and the shutdown token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::hub::Tailer;
use crate::source::SyncSource;

/// Counters for diagnostics and the bench.
#[derive(Debug, Default)]
pub struct Stats {
    pub sockets_open: AtomicU64,
    pub sockets_total: AtomicU64,
    pub batches_sent: AtomicU64,
    pub updates_sent: AtomicU64,
    pub slow_consumer_throttles: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub sockets_open: u64,
    pub sockets_total: u64,
    pub batches_sent: u64,
    pub updates_sent: u64,
    pub slow_consumer_throttles: u64,
    pub slow_consumer_disconnects: u64,
}

struct Inner {
    config: GatewayConfig,
    known_topics: Vec<String>,
    source: Arc<dyn SyncSource>,
    verifier: Verifier,
    tailers: HashMap<String, Arc<Tailer>>,
    /// One permit per open socket (taken at upgrade, released when the socket task ends).
    connections: Arc<Semaphore>,
    /// Tracks tailers, the revocation sync, and every socket's session and writer task, so
    /// shutdown can wait for all of them (axum's graceful shutdown does not wait for upgraded
    /// sockets).
    tracker: TaskTracker,
    /// Cancelled by the owner at shutdown: sockets send Close 1001, background tasks stop.
    shutdown: CancellationToken,
    next_session: AtomicU64,
    stats: Stats,
}

/// The Khala gateway of one node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Builds the gateway and spawns its background tasks (one tailer per topic, the
    /// revocation-list sync) onto its tracker. They stop when `shutdown` is cancelled.
    pub fn start(
        config: GatewayConfig,
        source: Arc<dyn SyncSource>,
        verifier: Verifier,
        shutdown: CancellationToken,
    ) -> Self {
        let tailers: HashMap<String, Arc<Tailer>> = config
            .topics
            .iter()
            .map(|p| (p.topic.clone(), Tailer::new(&p.topic, &config)))
            .collect();
        let gateway = Self {
            inner: Arc::new(Inner {
                known_topics: config.topic_names(),
                connections: Arc::new(Semaphore::new(config.max_connections)),
                config,
                source,
                verifier,
                tailers,
                tracker: TaskTracker::new(),
                shutdown,
                next_session: AtomicU64::new(1),
                stats: Stats::default(),
            }),
        };
        for tailer in gateway.inner.tailers.values() {
            gateway.inner.tracker.spawn(tailer.clone().run(
                gateway.inner.source.clone(),
                gateway.inner.config.tailer_poll_interval,
                gateway.inner.shutdown.clone(),
            ));
        }
        gateway
            .inner
            .tracker
            .spawn(gateway.inner.verifier.revocations().clone().run_sync(
                gateway.inner.config.revocation_poll_interval,
                gateway.inner.shutdown.clone(),
            ));
        gateway
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    pub fn known_topics(&self) -> &[String] {
        &self.inner.known_topics
    }

    pub fn source(&self) -> &Arc<dyn SyncSource> {
        &self.inner.source
    }

    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    pub fn tailer(&self, topic: &str) -> Option<&Arc<Tailer>> {
        self.inner.tailers.get(topic)
    }

    pub fn connections(&self) -> &Arc<Semaphore> {
        &self.inner.connections
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn stats_snapshot(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        StatsSnapshot {
            sockets_open: s.sockets_open.load(Ordering::Relaxed),
            sockets_total: s.sockets_total.load(Ordering::Relaxed),
            batches_sent: s.batches_sent.load(Ordering::Relaxed),
            updates_sent: s.updates_sent.load(Ordering::Relaxed),
            slow_consumer_throttles: s.slow_consumer_throttles.load(Ordering::Relaxed),
            slow_consumer_disconnects: s.slow_consumer_disconnects.load(Ordering::Relaxed),
        }
    }

    /// After `shutdown` was cancelled: waits until every socket task has sent its Close and
    /// every background task has stopped.
    pub async fn closed(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

//! The worker lease sweeper: marks workers whose lease ran out as lost.
//!
//! Each `serve` process tails the journal (`read_all`, from the start) into a small in-memory
//! index of active workers and their lease expiry, and issues `ExpireLease` through the engine
//! when one is due. The aggregate decides (it rejects an expire when the lease was renewed in the
//! meantime), and optimistic concurrency makes several sweepers on several nodes safe: at most
//! one `worker.lost` is appended per expiry, the others see a rejection or a no-op.
//!
//! Time comes from the engine's clock (injectable), so tests drive expiry deterministically.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aggregates::worker::{Worker, WorkerError, WorkerEvent};
use aggregates::{RuntimeAggregate, Timestamp};
use cqrs_es::Aggregate;
use engine::journal::{GlobalCursor, Journal};
use engine::{CommandContext, CommandError, Engine, OutcomeKind};
use tokio_util::sync::CancellationToken;

/// Events read per journal page.
const PAGE: usize = 1_000;
/// After a failed or refused expire, wait at least this long before trying that worker again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Active workers and when their leases run out, folded from the journal.
#[derive(Debug, Default)]
pub struct LeaseIndex {
    cursor: GlobalCursor,
    /// worker id → (lease expiry, earliest next attempt).
    leases: HashMap<String, (Timestamp, Timestamp)>,
}

impl LeaseIndex {
    /// Folds every journal event after the index's cursor.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub async fn catch_up(&mut self, engine: &Engine) -> anyhow::Result<()> {
        loop {
            let page = engine.journal().read_all(self.cursor, PAGE).await?;
            let full = page.len() == PAGE;
            for stored in page {
                self.cursor = stored.cursor;
                if stored.event.aggregate_type != <Worker as Aggregate>::TYPE {
                    continue;
                }
                let id = stored.event.aggregate_id.clone();
                let upcast = Worker::upcast(stored.event);
                let event: WorkerEvent = match serde_json::from_value(upcast.payload) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(worker_id = %id, error.message = %error, "undecodable worker event; skipped by the sweeper");
                        continue;
                    }
                };
                self.apply(id, &event);
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn apply(&mut self, id: String, event: &WorkerEvent) {
        match event {
            WorkerEvent::WorkerRegistered {
                lease_expires_at, ..
            }
            | WorkerEvent::WorkerReattached {
                lease_expires_at, ..
            }
            | WorkerEvent::WorkerStarted {
                lease_expires_at, ..
            }
            | WorkerEvent::LeaseRenewed {
                lease_expires_at, ..
            } => {
                self.leases
                    .insert(id, (*lease_expires_at, *lease_expires_at));
            }
            WorkerEvent::WorkerStopped { .. }
            | WorkerEvent::WorkerFailed { .. }
            | WorkerEvent::WorkerLost { .. } => {
                self.leases.remove(&id);
            }
            WorkerEvent::RequestReceived { .. }
            | WorkerEvent::EventReported { .. }
            | WorkerEvent::WorkerStopping { .. } => {}
        }
    }

    /// Workers whose lease ran out and that are due for an attempt at `now`.
    pub fn due(&self, now: Timestamp) -> Vec<String> {
        let mut due: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, (expires, next_try))| *expires <= now && *next_try <= now)
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due
    }

    /// The earliest instant something may become due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.leases
            .values()
            .map(|(expires, next_try)| (*expires).max(*next_try))
            .min()
    }

    fn postpone(&mut self, id: &str, until: Timestamp) {
        if let Some(entry) = self.leases.get_mut(id) {
            entry.1 = until;
        }
    }

    /// How many active workers are tracked.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// One sweep: catch up with the journal, then expire every due lease. Returns how many workers
/// this call marked lost.
///
/// # Errors
/// When the journal cannot be read. Individual expire failures are logged and retried later.
pub async fn sweep_once(engine: &Engine, index: &mut LeaseIndex) -> anyhow::Result<usize> {
    index.catch_up(engine).await?;
    let now = engine.now();
    let mut lost = 0;
    for id in index.due(now) {
        let context = CommandContext::system("lease-sweeper");
        match engine
            .execute::<Worker>(
                &id,
                aggregates::worker::WorkerCommand::ExpireLease,
                &context,
            )
            .await
        {
            Ok(outcome) if outcome.kind == OutcomeKind::Appended => {
                tracing::info!(worker_id = %id, "lease expired: worker marked lost");
                metrics::counter!("runtime_worker_leases_expired_total").increment(1);
                lost += 1;
                index.leases.remove(&id);
            }
            Ok(_) => index.postpone(&id, now.plus_millis(RETRY_AFTER.as_millis() as u64)),
            // Renewed or stopped meanwhile (possibly by another node): the journal will tell.
            Err(CommandError::Rejected(WorkerError::LeaseNotExpired))
            | Err(CommandError::Rejected(WorkerError::NotActive { .. }))
            | Err(CommandError::Contended { .. }) => {
                index.postpone(&id, now.plus_millis(RETRY_AFTER.as_millis() as u64));
            }
            Err(error) => {
                tracing::warn!(worker_id = %id, error.message = %error, "expiring a lease failed; will retry");
                index.postpone(&id, now.plus_millis(RETRY_AFTER.as_millis() as u64));
            }
        }
    }
    Ok(lost)
}

/// Runs the sweeper until `shutdown` is cancelled: sweeps, then sleeps until the next known lease
/// is due or `interval` passes, whichever is first (so a newly registered lease is noticed within
/// `interval`; leases are at least a second long).
///
/// # Errors
/// Never returns an error for transient journal failures (it logs and retries); returns `Ok`
/// on shutdown.
///
/// # Cancel safety
/// Stops at the next await once `shutdown` is cancelled; an expire in flight completes first.
pub async fn run(
    engine: Arc<Engine>,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut index = LeaseIndex::default();
    loop {
        if let Err(error) = sweep_once(&engine, &mut index).await {
            tracing::warn!(error.message = %error, "lease sweep failed; retrying");
        }
        metrics::gauge!("runtime_workers_leased").set(index.len() as f64);
        let now = engine.now();
        let wait = index
            .next_due()
            .map(|due| Duration::from_millis(due.millis_since(now)))
            .unwrap_or(interval)
            .min(interval)
            .max(Duration::from_millis(10));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

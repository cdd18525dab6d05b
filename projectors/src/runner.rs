//! The projector runner: one task per read model and process, of which exactly one (the lease
//! holder) projects at a time.
//!
//! A follower polls for the lease every third of its TTL. The leader loops: read a batch of the
//! journal in commit order after its cursor, fold it through the projection, and commit
//! documents, watermarks, stream rows and the cursor in one transaction
//! ([`SyncStore::commit`]). It is woken by the journal's commit notices (in-process, and from
//! peers through PostgreSQL `NOTIFY`) with a short fallback poll, renews its lease, rebuilds when
//! asked (`reproject --all`) or when the projection's version changed, prunes its topic, and
//! publishes lag metrics.
//!
//! Exactly once: a batch's documents, rows and cursor move together, so after any crash the
//! projector resumes exactly after the last committed batch. A commit whose outcome is unknown
//! (connection lost around `COMMIT`) is never retried blindly: the runner re-reads its
//! checkpoint first and continues from the stored cursor. A projection error (an event it cannot
//! decode) stops the projector on that event and retries with backoff rather than skipping it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::canonical::hash_canonical;
use cqrs_es::persist::SerializedEvent;
use engine::backoff::Backoff;
use engine::journal::{GlobalCursor, StoredEvent};
use engine::{AnyJournal, Journal, JournalError};
use futures::future::BoxFuture;
use lru::LruCache;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{recorded_at, ProjectedEvent, Projection, ProjectionError};
use crate::notify::SyncNotifier;
use crate::store::{
    BatchCommit, Checkpoint, DocRow, DocWrite, NewRow, ProjectorSpec, Repaired, StoreError,
    Swapped, SyncStore, Target,
};

/// Tunables of every runner of a process.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Journal events read (and folded) per batch.
    pub batch_size: usize,
    /// Fallback poll when no commit notice arrives.
    pub poll_interval: Duration,
    /// How long a lease lasts without renewal; a peer takes over after it expires.
    pub lease_ttl: Duration,
    /// Per topic: stream rows older than this are pruned (topics without an entry keep
    /// everything).
    pub retention: HashMap<String, Duration>,
    /// How often the leader prunes.
    pub prune_interval: Duration,
    /// Rows deleted per prune transaction.
    pub prune_batch: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            retention: HashMap::new(),
            prune_interval: Duration::from_secs(60),
            prune_batch: 10_000,
        }
    }
}

/// What every runner of a process shares.
pub struct ProjectorContext {
    pub store: SyncStore,
    pub journal: AnyJournal,
    pub notifier: Arc<SyncNotifier>,
    /// Changes whenever the journal grew (`engine::notify::JournalNotifier::appended`).
    pub journal_appended: watch::Receiver<u64>,
    /// This process's lease-owner id.
    pub instance: String,
    pub config: RunnerConfig,
}

impl ProjectorContext {
    /// A context with a fresh instance id (`<pid>-<uuid>`).
    pub fn new(
        store: SyncStore,
        journal: AnyJournal,
        notifier: Arc<SyncNotifier>,
        journal_appended: watch::Receiver<u64>,
        config: RunnerConfig,
    ) -> Self {
        Self {
            store,
            journal,
            notifier,
            journal_appended,
            instance: format!(
                "{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
                    .simple()
                    .to_string()
                    .get(..12)
                    .unwrap_or("x")
            ),
            config,
        }
    }
}

/// Why a runner step failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("journal read failed")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot serialise a document: {0}")]
    Serialize(String),
    #[error("stopped before the rebuild finished")]
    Stopped,
    #[error("projector {0} is running in another process (its lease is held)")]
    LeaseHeld(String),
}

impl RunnerError {
    fn label(&self) -> &'static str {
        match self {
            RunnerError::Projection(_) => "projection",
            RunnerError::Journal(_) => "journal",
            RunnerError::Store(_) => "store",
            RunnerError::Serialize(_) => "serialize",
            RunnerError::Stopped => "stopped",
            RunnerError::LeaseHeld(_) => "lease_held",
        }
    }
}

/// Unix milliseconds now (re-exported for the runtime's callers).
pub use engine::clock::now_ms;

/// The spec of projection `P`.
pub fn spec_of<P: Projection>() -> ProjectorSpec {
    ProjectorSpec {
        name: P::NAME,
        topic: P::TOPIC,
        table: P::TABLE,
        version: P::VERSION,
        docs_are_events: P::DOCS_ARE_EVENTS,
    }
}

/// How a leadership term ended.
enum Term {
    /// Shutdown: the lease was released.
    Stopped,
    /// Another process took the lease.
    Lost,
    /// (Rebuild-once mode) the rebuild finished.
    Rebuilt(Swapped),
}

/// What the leader should do after a step.
enum Next {
    /// A full batch: go again at once.
    Busy,
    /// Caught up: wait for a notice (or the fallback poll).
    Idle { empty: bool },
}

/// One read model's runner.
pub struct Runner<P: Projection> {
    ctx: Arc<ProjectorContext>,
    spec: ProjectorSpec,
    births: LruCache<(String, String), Arc<SerializedEvent>>,
    /// During a full rebuild: the shadow documents as this runner last committed them, so a
    /// batch does not read back what the previous one wrote. Valid only while the stored
    /// rebuild cursor is `shadow_cursor` (only the lease holder writes the shadow table).
    shadow: HashMap<String, (P::Doc, u64, Option<usize>)>,
    shadow_cursor: Option<GlobalCursor>,
    /// Events in the last rebuild batch (for [`Runner::catch_up`]'s count).
    last_rebuild_batch: u64,
    /// During a rebuild: the read of the next batch, started while this one is folded and
    /// committed (the journal is immutable below the horizon, so reading ahead is safe).
    prefetch: Option<(GlobalCursor, Prefetch)>,
    _projection: PhantomData<P>,
}

type Prefetch = tokio::task::JoinHandle<Result<Vec<StoredEvent>, JournalError>>;

/// The shadow cache is dropped beyond this many documents (the batches then read them back).
const SHADOW_CACHE_LIMIT: usize = 200_000;

/// Delays between reads that found nothing visible after a wake-up. On PostgreSQL an event
/// becomes readable only once every transaction older than it has ended (ADR 0038); under a
/// steady command load one usually has, a few milliseconds later. A doubling delay from 1 ms
/// overshoots that by up to 2× (1, 3, 7, 15, 31 ms), so the first retries come at a fixed short
/// interval and only a horizon held longer (a long transaction) backs off toward the poll.
#[derive(Debug, Default)]
struct HorizonRetry {
    tries: u32,
}

impl HorizonRetry {
    const FIXED: Duration = Duration::from_millis(2);
    const FIXED_TRIES: u32 = 16;

    fn next(&mut self, ceiling: Duration) -> Duration {
        self.tries = self.tries.saturating_add(1);
        let doublings = self.tries.saturating_sub(Self::FIXED_TRIES).min(16);
        (Self::FIXED * 2u32.pow(doublings)).min(ceiling)
    }

    fn reset(&mut self) {
        self.tries = 0;
    }
}

/// A batch folded into what to commit.
struct Folded {
    rows: Vec<NewRow>,
    docs: Vec<DocWrite>,
    /// Recorded times of the relevant events, for the lag histogram.
    recorded_ms: Vec<i64>,
}

fn serialize_doc<P: Projection>(doc: &P::Doc) -> Result<(String, String), RunnerError> {
    let value = serde_json::to_value(doc).map_err(|e| RunnerError::Serialize(e.to_string()))?;
    Ok((value.to_string(), hash_canonical(&value)))
}

fn parse_doc<P: Projection>(row: &DocRow) -> Result<P::Doc, RunnerError> {
    serde_json::from_str(&row.payload).map_err(|e| {
        RunnerError::Store(StoreError::Corrupt(format!(
            "document {} does not decode: {e}",
            row.doc_key
        )))
    })
}

impl<P: Projection> Runner<P> {
    pub fn new(ctx: Arc<ProjectorContext>) -> Self {
        Self {
            ctx,
            spec: spec_of::<P>(),
            births: LruCache::new(NonZeroUsize::new(10_000).expect("non-zero")),
            shadow: HashMap::new(),
            shadow_cursor: None,
            last_rebuild_batch: 0,
            prefetch: None,
            _projection: PhantomData,
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ctx.config.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn renew_every(&self) -> Duration {
        (self.ctx.config.lease_ttl / 3).max(Duration::from_millis(50))
    }

    /// Runs until `shutdown`: follows, leads, follows again after losing the lease.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.spec.name;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.acquire().await {
                Ok(Some(checkpoint)) => {
                    backoff.reset();
                    tracing::info!(projector = name, cursor = %checkpoint.cursor, "projector lease acquired");
                    metrics::gauge!("runtime_projector_leader", "projector" => name).set(1.0);
                    let term = self.lead(checkpoint, &shutdown, false).await;
                    metrics::gauge!("runtime_projector_leader", "projector" => name).set(0.0);
                    match term {
                        Term::Stopped => return,
                        Term::Lost => {
                            tracing::warn!(
                                projector = name,
                                "projector lease lost to another process"
                            );
                        }
                        Term::Rebuilt(_) => {}
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(projector = name, error.message = %error, "projector cannot reach its store");
                    if !backoff.sleep(&shutdown).await {
                        return;
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.renew_every()) => {}
            }
        }
    }

    /// For `reproject --all`: once the lease is free, leads just long enough to run the
    /// requested rebuild, then releases it. If another process holds the lease, waits until that
    /// process finished a rebuild started at or after `requested_at_ms`.
    ///
    /// # Errors
    /// [`RunnerError::Stopped`] when `shutdown` comes first; store errors.
    pub async fn run_until_rebuilt(
        mut self,
        requested_at_ms: i64,
        shutdown: CancellationToken,
    ) -> Result<Option<Swapped>, RunnerError> {
        loop {
            if shutdown.is_cancelled() {
                return Err(RunnerError::Stopped);
            }
            if let Some(checkpoint) = self.ctx.store.checkpoint(self.spec.name).await? {
                let done = checkpoint.rebuild.is_none()
                    && !checkpoint.rebuild_requested
                    && checkpoint
                        .last_rebuilt_at_ms
                        .is_some_and(|at| at >= requested_at_ms);
                if done {
                    return Ok(None);
                }
            }
            if let Some(checkpoint) = self.acquire().await? {
                match self.lead(checkpoint, &shutdown, true).await {
                    Term::Rebuilt(swapped) => return Ok(Some(swapped)),
                    Term::Stopped => return Err(RunnerError::Stopped),
                    Term::Lost => {}
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(RunnerError::Stopped),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Projects everything committed so far and returns (for replays, tests and tools that own
    /// the database): takes the lease, runs any pending rebuild, folds live batches until no
    /// event is left after the cursor, persists the cursor and releases the lease. Returns the
    /// number of journal events read.
    ///
    /// # Errors
    /// [`RunnerError::LeaseHeld`] when another process holds the lease; projection and store
    /// errors; a journal read horizon that does not move for a minute.
    pub async fn catch_up(mut self) -> Result<u64, RunnerError> {
        let Some(checkpoint) = self.acquire().await? else {
            return Err(RunnerError::LeaseHeld(self.spec.name.to_owned()));
        };
        let result = self.catch_up_inner(checkpoint).await;
        let _ = self
            .ctx
            .store
            .release(self.spec.name, &self.ctx.instance)
            .await;
        result
    }

    async fn catch_up_inner(&mut self, mut checkpoint: Checkpoint) -> Result<u64, RunnerError> {
        let mut read = 0;
        if checkpoint.rebuild_requested || checkpoint.projection_version != P::VERSION {
            if checkpoint.rebuild.is_none() {
                self.ctx
                    .store
                    .begin_rebuild(&self.spec, &self.ctx.instance, now_ms())
                    .await?;
            }
            checkpoint = self
                .ctx
                .store
                .checkpoint(self.spec.name)
                .await?
                .ok_or_else(|| StoreError::UnknownProjector(self.spec.name.to_owned()))?;
        }
        if let Some(rebuild) = &checkpoint.rebuild {
            let never = CancellationToken::new();
            let mut from = rebuild.cursor;
            loop {
                let (to, finished) = self.rebuild_run(from, &never).await?;
                read += self.last_rebuild_batch;
                from = to;
                if finished {
                    break;
                }
            }
            self.shadow.clear();
            self.ctx
                .store
                .finish_rebuild(&self.spec, &self.ctx.instance, now_ms())
                .await?;
            self.ctx.notifier.committed(self.spec.topic);
            checkpoint = self
                .ctx
                .store
                .checkpoint(self.spec.name)
                .await?
                .ok_or_else(|| StoreError::UnknownProjector(self.spec.name.to_owned()))?;
        }
        let (mut persisted, mut cursor, mut pending) = (checkpoint.cursor, checkpoint.cursor, 0);
        let started = Instant::now();
        loop {
            let step = self.step_live(persisted, cursor, pending).await?;
            read += step.events;
            cursor = step.cursor;
            if step.committed {
                persisted = cursor;
                pending = 0;
            } else {
                pending += step.events;
            }
            if matches!(step.next, Next::Busy) {
                continue;
            }
            if self.ctx.journal.count_after(cursor, 1).await? == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(RunnerError::Journal(JournalError::Corrupt(
                    "the journal's read horizon did not pass its last events for a minute \
                     (is a transaction left open on the server?)"
                        .into(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if persisted != cursor {
            self.commit_empty(persisted, cursor, pending).await?;
        }
        Ok(read)
    }

    async fn acquire(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.ctx.store.register(&self.spec, now_ms()).await?;
        self.ctx
            .store
            .try_acquire(self.spec.name, &self.ctx.instance, now_ms(), self.ttl_ms())
            .await
    }

    /// One leadership term.
    async fn lead(
        &mut self,
        mut checkpoint: Checkpoint,
        shutdown: &CancellationToken,
        rebuild_once: bool,
    ) -> Term {
        let name = self.spec.name;
        let mut cursor = checkpoint.cursor;
        let mut persisted = checkpoint.cursor;
        let mut pending_events: u64 = 0;
        let mut appended = self.ctx.journal_appended.clone();
        let mut next_renew = Instant::now() + self.renew_every();
        let mut next_prune = Instant::now() + Duration::from_secs(1);
        let mut next_metrics = Instant::now();
        let mut caught_up_at = Instant::now();
        let mut error_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut horizon = HorizonRetry::default();
        loop {
            if shutdown.is_cancelled() {
                if persisted != cursor {
                    let _ = self.commit_empty(persisted, cursor, pending_events).await;
                }
                if let Err(error) = self.ctx.store.release(name, &self.ctx.instance).await {
                    tracing::warn!(projector = name, error.message = %error, "releasing the projector lease failed; it expires on its own");
                }
                return Term::Stopped;
            }
            let now = Instant::now();
            if now >= next_renew {
                next_renew = now + self.renew_every();
                match self.acquire().await {
                    Ok(Some(fresh)) => {
                        checkpoint = fresh;
                        if checkpoint.cursor != persisted {
                            // Someone moved the cursor (only possible after a lost lease): trust
                            // the store.
                            cursor = checkpoint.cursor;
                            persisted = checkpoint.cursor;
                            pending_events = 0;
                        } else if persisted != cursor {
                            match self.commit_empty(persisted, cursor, pending_events).await {
                                Ok(()) => {
                                    persisted = cursor;
                                    pending_events = 0;
                                }
                                Err(StoreError::LeaseLost(_)) => return Term::Lost,
                                Err(_) => {}
                            }
                        }
                    }
                    Ok(None) => return Term::Lost,
                    Err(error) => {
                        tracing::warn!(projector = name, error.message = %error, "lease renewal failed");
                    }
                }
            }
            if now >= next_metrics && checkpoint.rebuild.is_none() {
                next_metrics = now + Duration::from_secs(1);
                self.publish_lag(cursor, caught_up_at).await;
            }
            let step = if let Some(rebuild) = checkpoint.rebuild.clone() {
                metrics::gauge!("runtime_projector_rebuilding", "projector" => name).set(1.0);
                match self.rebuild_run(rebuild.cursor, shutdown).await {
                    Ok((to, finished)) => {
                        if let Some(state) = checkpoint.rebuild.as_mut() {
                            state.cursor = to;
                        }
                        if finished {
                            match self
                                .ctx
                                .store
                                .finish_rebuild(&self.spec, &self.ctx.instance, now_ms())
                                .await
                            {
                                Ok(swapped) => {
                                    self.shadow.clear();
                                    self.shadow_cursor = None;
                                    metrics::gauge!("runtime_projector_rebuilding", "projector" => name).set(0.0);
                                    tracing::info!(
                                        projector = name,
                                        epoch = swapped.epoch,
                                        epoch_start = swapped.epoch_start,
                                        docs = swapped.docs,
                                        "rebuild finished; new epoch"
                                    );
                                    self.ctx.notifier.committed(self.spec.topic);
                                    match self.ctx.store.checkpoint(name).await {
                                        Ok(Some(fresh)) => {
                                            cursor = fresh.cursor;
                                            persisted = fresh.cursor;
                                            pending_events = 0;
                                            checkpoint = fresh;
                                        }
                                        _ => return Term::Lost,
                                    }
                                    if rebuild_once {
                                        let _ =
                                            self.ctx.store.release(name, &self.ctx.instance).await;
                                        return Term::Rebuilt(swapped);
                                    }
                                    Ok(Next::Busy)
                                }
                                Err(e) => Err(RunnerError::Store(e)),
                            }
                        } else {
                            Ok(Next::Busy)
                        }
                    }
                    Err(e) => Err(e),
                }
            } else if checkpoint.rebuild_requested || checkpoint.projection_version != P::VERSION {
                tracing::info!(
                    projector = name,
                    stored_version = checkpoint.projection_version,
                    version = P::VERSION,
                    requested = checkpoint.rebuild_requested,
                    "starting a full rebuild"
                );
                if persisted != cursor {
                    let _ = self.commit_empty(persisted, cursor, pending_events).await;
                }
                match self
                    .ctx
                    .store
                    .begin_rebuild(&self.spec, &self.ctx.instance, now_ms())
                    .await
                {
                    Ok(()) => match self.ctx.store.checkpoint(name).await {
                        Ok(Some(fresh)) => {
                            cursor = fresh.cursor;
                            persisted = fresh.cursor;
                            pending_events = 0;
                            checkpoint = fresh;
                            Ok(Next::Busy)
                        }
                        Ok(None) => return Term::Lost,
                        Err(e) => Err(RunnerError::Store(e)),
                    },
                    Err(e) => Err(RunnerError::Store(e)),
                }
            } else if rebuild_once {
                // Asked to rebuild, but the rebuild already happened elsewhere.
                let _ = self.ctx.store.release(name, &self.ctx.instance).await;
                return Term::Stopped;
            } else {
                match self.step_live(persisted, cursor, pending_events).await {
                    Ok(live) => {
                        cursor = live.cursor;
                        if live.committed {
                            persisted = live.cursor;
                            pending_events = 0;
                        } else {
                            pending_events += live.events;
                        }
                        if !matches!(live.next, Next::Busy) {
                            caught_up_at = Instant::now();
                        }
                        Ok(live.next)
                    }
                    Err(e) => Err(e),
                }
            };
            if now >= next_prune && checkpoint.rebuild.is_none() {
                next_prune = now + self.ctx.config.prune_interval;
                self.prune().await;
            }
            let wait = match step {
                Ok(Next::Busy) => {
                    error_backoff.reset();
                    horizon.reset();
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Next::Idle { empty }) => {
                    error_backoff.reset();
                    if empty {
                        // Woken but nothing visible yet (an older transaction still holds the
                        // journal's read horizon): look again soon, backing off to the poll.
                        horizon.next(self.ctx.config.poll_interval)
                    } else {
                        horizon.reset();
                        self.ctx.config.poll_interval
                    }
                }
                Err(RunnerError::Store(StoreError::LeaseLost(_))) => return Term::Lost,
                Err(error) => {
                    metrics::counter!("runtime_projector_errors_total", "projector" => name, "kind" => error.label()).increment(1);
                    tracing::error!(projector = name, error.message = %error, error.cause_chain = ?error, "projector step failed; retrying");
                    // The outcome of a failed commit is unknown: continue from the stored cursor.
                    match self.ctx.store.checkpoint(name).await {
                        Ok(Some(fresh)) => {
                            if fresh.lease_owner.as_deref() != Some(self.ctx.instance.as_str()) {
                                return Term::Lost;
                            }
                            cursor = fresh.cursor;
                            persisted = fresh.cursor;
                            pending_events = 0;
                            checkpoint = fresh;
                        }
                        Ok(None) => return Term::Lost,
                        Err(_) => {}
                    }
                    error_backoff.next_delay()
                }
            };
            let deadline = wait.min(next_renew.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                changed = appended.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(deadline).await;
                    } else {
                        horizon.reset();
                    }
                }
                _ = tokio::time::sleep(deadline) => {}
            }
        }
    }

    async fn publish_lag(&self, cursor: GlobalCursor, caught_up_at: Instant) {
        let name = self.spec.name;
        match self.ctx.journal.count_after(cursor, 1_000_000).await {
            Ok(behind) => {
                metrics::gauge!("runtime_projector_events_behind", "projector" => name)
                    .set(behind as f64);
                let seconds = if behind == 0 {
                    0.0
                } else {
                    caught_up_at.elapsed().as_secs_f64()
                };
                metrics::gauge!("runtime_projector_seconds_behind", "projector" => name)
                    .set(seconds);
            }
            Err(error) => {
                tracing::debug!(projector = name, error.message = %error, "lag count failed");
            }
        }
    }

    async fn commit_empty(
        &self,
        from: GlobalCursor,
        to: GlobalCursor,
        events: u64,
    ) -> Result<(), StoreError> {
        self.ctx
            .store
            .commit(BatchCommit {
                spec: &self.spec,
                target: Target::Live,
                owner: &self.ctx.instance,
                from,
                to,
                events,
                rows: Vec::new(),
                docs: Vec::new(),
                now_ms: now_ms(),
                lease_ttl_ms: self.ttl_ms(),
            })
            .await
            .map(|_| ())
    }

    /// Reads and projects one live batch after `cursor` (the stored cursor is `persisted`).
    async fn step_live(
        &mut self,
        persisted: GlobalCursor,
        cursor: GlobalCursor,
        pending_events: u64,
    ) -> Result<LiveStep, RunnerError> {
        let started = Instant::now();
        let batch = self.ctx.config.batch_size;
        let events = self.ctx.journal.read_all(cursor, batch).await?;
        let Some(last) = events.last() else {
            return Ok(LiveStep {
                cursor,
                committed: false,
                events: 0,
                next: Next::Idle { empty: true },
            });
        };
        let to = last.cursor;
        let next = if events.len() >= batch {
            Next::Busy
        } else {
            Next::Idle { empty: false }
        };
        let name = self.spec.name;
        metrics::counter!("runtime_projector_events_total", "projector" => name)
            .increment(events.len() as u64);
        let folded = self.fold_batch(Target::Live, &events).await?;
        if folded.rows.is_empty() && folded.docs.is_empty() {
            // Nothing for this read model: move on in memory; the cursor is persisted with the
            // next change or lease renewal (re-reading these after a crash is harmless).
            return Ok(LiveStep {
                cursor: to,
                committed: false,
                events: events.len() as u64,
                next,
            });
        }
        let rows = folded.rows.len() as u64;
        self.ctx
            .store
            .commit(BatchCommit {
                spec: &self.spec,
                target: Target::Live,
                owner: &self.ctx.instance,
                from: persisted,
                to,
                events: pending_events + events.len() as u64,
                rows: folded.rows,
                docs: folded.docs,
                now_ms: now_ms(),
                lease_ttl_ms: self.ttl_ms(),
            })
            .await?;
        if rows > 0 {
            self.ctx.notifier.committed(self.spec.topic);
        }
        let committed_at = now_ms();
        metrics::counter!("runtime_projector_changes_total", "projector" => name).increment(rows);
        metrics::histogram!("runtime_projector_batch_seconds", "projector" => name)
            .record(started.elapsed().as_secs_f64());
        for recorded in folded.recorded_ms {
            metrics::histogram!("runtime_projection_lag_seconds", "projector" => name)
                .record((committed_at - recorded).max(0) as f64 / 1000.0);
        }
        Ok(LiveStep {
            cursor: to,
            committed: true,
            events: events.len() as u64,
            next,
        })
    }

    /// Reads the rebuild batch after `from` (taking a matching read-ahead if one is running) and
    /// starts reading the one after it.
    async fn read_rebuild_batch(
        &mut self,
        from: GlobalCursor,
    ) -> Result<Vec<StoredEvent>, RunnerError> {
        let batch = self.ctx.config.batch_size;
        let events = match self.prefetch.take() {
            Some((at, read)) if at == from => match read.await {
                Ok(events) => events?,
                Err(_) => self.ctx.journal.read_all(from, batch).await?,
            },
            stale => {
                if let Some((_, read)) = stale {
                    read.abort();
                }
                self.ctx.journal.read_all(from, batch).await?
            }
        };
        if let Some(last) = events.last().filter(|_| events.len() >= batch) {
            let journal = self.ctx.journal.clone();
            let to = last.cursor;
            self.prefetch = Some((
                to,
                tokio::spawn(async move { journal.read_all(to, batch).await }),
            ));
        }
        Ok(events)
    }

    /// Projects the journal after `from` into the shadow table until it is exhausted (up to
    /// its read horizon; `finished`) or `shutdown`, as a pipeline: batch N+1 is read ahead and
    /// folded while batch N commits, and commits stay strictly in order (each checks that the
    /// stored rebuild cursor is where the previous one left it). Returns the rebuild cursor
    /// committed last.
    async fn rebuild_run(
        &mut self,
        mut from: GlobalCursor,
        shutdown: &CancellationToken,
    ) -> Result<(GlobalCursor, bool), RunnerError> {
        let batch = self.ctx.config.batch_size;
        self.last_rebuild_batch = 0;
        if self.shadow_cursor != Some(from) {
            // Another process (or an earlier term of this one) wrote the shadow since.
            self.shadow.clear();
        }
        type InFlight = (
            GlobalCursor,
            tokio::task::JoinHandle<Result<(), StoreError>>,
        );
        let mut in_flight: Option<InFlight> = None;
        let mut committed = from;
        let result = loop {
            let started = Instant::now();
            let events = match self.read_rebuild_batch(from).await {
                Ok(events) => events,
                Err(error) => break Err(error),
            };
            let read = started.elapsed();
            let finished = events.len() < batch;
            let folded = if events.is_empty() {
                None
            } else {
                match self.fold_batch(Target::Rebuild, &events).await {
                    Ok(folded) => Some(folded),
                    Err(error) => break Err(error),
                }
            };
            let folded_at = started.elapsed();
            // The previous batch must have committed before this one may.
            if let Some((to, commit)) = in_flight.take() {
                match commit.await {
                    Ok(Ok(())) => committed = to,
                    Ok(Err(error)) => break Err(error.into()),
                    Err(join) => {
                        break Err(RunnerError::Store(StoreError::Corrupt(format!(
                            "rebuild commit task failed: {join}"
                        ))))
                    }
                }
            }
            let Some(folded) = folded else {
                break Ok(true);
            };
            let to = events.last().map_or(from, |e| e.cursor);
            let commit = {
                let store = self.ctx.store.clone();
                let spec = self.spec.clone();
                let owner = self.ctx.instance.clone();
                let ttl = self.ttl_ms();
                let count = events.len() as u64;
                let docs = folded.docs;
                tokio::spawn(async move {
                    store
                        .commit(BatchCommit {
                            spec: &spec,
                            target: Target::Rebuild,
                            owner: &owner,
                            from,
                            to,
                            events: count,
                            rows: Vec::new(),
                            docs,
                            now_ms: now_ms(),
                            lease_ttl_ms: ttl,
                        })
                        .await
                        .map(|_| ())
                })
            };
            in_flight = Some((to, commit));
            self.last_rebuild_batch += events.len() as u64;
            metrics::counter!("runtime_projector_rebuild_events_total", "projector" => self.spec.name)
                .increment(events.len() as u64);
            tracing::debug!(
                projector = self.spec.name,
                events = events.len(),
                read_ms = read.as_millis() as u64,
                fold_ms = (folded_at - read).as_millis() as u64,
                "rebuild batch"
            );
            from = to;
            if finished || shutdown.is_cancelled() {
                break Ok(finished);
            }
        };
        // Whatever happened, the last commit's outcome decides where the rebuild stands.
        let mut result = result;
        if let Some((to, commit)) = in_flight.take() {
            match commit.await {
                Ok(Ok(())) => committed = to,
                Ok(Err(error)) => {
                    if result.is_ok() {
                        result = Err(error.into());
                    }
                }
                Err(join) => {
                    if result.is_ok() {
                        result = Err(RunnerError::Store(StoreError::Corrupt(format!(
                            "rebuild commit task failed: {join}"
                        ))));
                    }
                }
            }
        }
        match result {
            Ok(finished) => {
                self.shadow_cursor = Some(committed);
                if self.shadow.len() > SHADOW_CACHE_LIMIT {
                    self.shadow.clear();
                }
                Ok((committed, finished))
            }
            Err(error) => {
                self.shadow.clear();
                self.shadow_cursor = None;
                if let Some((_, read)) = self.prefetch.take() {
                    read.abort();
                }
                Err(error)
            }
        }
    }

    async fn birth(
        &mut self,
        event: &SerializedEvent,
    ) -> Result<Option<Arc<SerializedEvent>>, RunnerError> {
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if let Some(found) = self.births.get(&key) {
            return Ok(Some(found.clone()));
        }
        let loaded = self
            .ctx
            .journal
            .load_stored(&event.aggregate_type, &event.aggregate_id, 0, 1)
            .await?;
        let Some(first) = loaded.into_iter().next() else {
            return Ok(None);
        };
        let first = Arc::new(P::upcast(&first.event).unwrap_or(first.event));
        self.births.put(key, first.clone());
        Ok(Some(first))
    }

    /// Folds `events` (in commit order) into rows (live only) and final documents.
    async fn fold_batch(
        &mut self,
        target: Target,
        events: &[StoredEvent],
    ) -> Result<Folded, RunnerError> {
        let mut relevant = Vec::new();
        for stored in events {
            if !P::AGGREGATE_TYPES.contains(&stored.event.aggregate_type.as_str()) {
                continue;
            }
            let event = match P::upcast(&stored.event) {
                Some(upcast) => std::borrow::Cow::Owned(upcast),
                None => std::borrow::Cow::Borrowed(&stored.event),
            };
            if event.sequence == 1 && P::NEEDS_BIRTH {
                self.births.put(
                    (event.aggregate_type.clone(), event.aggregate_id.clone()),
                    Arc::new(event.clone().into_owned()),
                );
            }
            if let Some(key) = P::doc_key(&event) {
                relevant.push((stored, event, key));
            }
        }
        // A rebuild folds into its cache of the shadow (taken out here, put back only when the
        // whole batch folded); a live batch starts from the stored documents.
        let mut working: HashMap<String, (P::Doc, u64, Option<usize>)> = match target {
            Target::Rebuild => std::mem::take(&mut self.shadow),
            Target::Live => HashMap::new(),
        };
        if !P::DOCS_ARE_EVENTS && !relevant.is_empty() {
            let mut keys: Vec<String> = relevant
                .iter()
                .map(|(_, _, k)| k)
                .filter(|k| !working.contains_key(*k))
                .cloned()
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for row in self.ctx.store.load_docs(&self.spec, target, &keys).await? {
                let doc = parse_doc::<P>(&row)?;
                working.insert(row.doc_key.clone(), (doc, row.doc_version, None));
            }
        }
        let mut rows = Vec::new();
        let mut recorded_ms = Vec::new();
        // Documents in the order they first changed in this batch.
        let mut order: Vec<String> = Vec::new();
        let mut touched = std::collections::HashSet::new();
        for (stored, event, key) in &relevant {
            let birth = if P::NEEDS_BIRTH {
                self.birth(event).await?
            } else {
                None
            };
            let at = recorded_at(stored);
            let projected = ProjectedEvent {
                stored,
                event,
                recorded_at: at,
                birth: birth.as_deref(),
            };
            let prior = working.remove(key);
            let (prior_version, prior_row) = prior.as_ref().map_or((0, None), |(_, v, r)| (*v, *r));
            let mut slot = prior.map(|(d, _, _)| d);
            let changed = P::apply(&mut slot, &projected)?;
            let Some(doc) = slot else {
                continue;
            };
            if !changed {
                working.insert(key.clone(), (doc, prior_version, prior_row));
                continue;
            }
            let version = prior_version + 1;
            recorded_ms.push(at.unix_micros() / 1000);
            let last_row = if target == Target::Live {
                let (payload, payload_hash) = serialize_doc::<P>(&doc)?;
                rows.push(NewRow {
                    doc_key: key.clone(),
                    doc_version: version,
                    payload,
                    payload_hash,
                    owner: P::owner(&doc),
                    projected_at_ms: P::projected_at(&doc).unix_micros() / 1000,
                });
                Some(rows.len() - 1)
            } else {
                None
            };
            if touched.insert(key.clone()) {
                order.push(key.clone());
            }
            working.insert(key.clone(), (doc, version, last_row));
        }
        let mut docs = Vec::with_capacity(order.len());
        for key in order {
            let Some((doc, version, last_row)) = working.get(&key) else {
                continue;
            };
            let (payload, payload_hash) = match last_row {
                Some(i) => (rows[*i].payload.clone(), rows[*i].payload_hash.clone()),
                None => serialize_doc::<P>(doc)?,
            };
            docs.push(DocWrite {
                doc_key: key,
                doc_version: *version,
                payload,
                payload_hash,
                owner: P::owner(doc),
                projected_at_ms: P::projected_at(doc).unix_micros() / 1000,
                last_row: *last_row,
            });
        }
        if target == Target::Rebuild && !P::DOCS_ARE_EVENTS {
            self.shadow = working;
        }
        Ok(Folded {
            rows,
            docs,
            recorded_ms,
        })
    }

    async fn prune(&self) {
        let Some(retention) = self.ctx.config.retention.get(self.spec.topic) else {
            return;
        };
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        for _ in 0..100 {
            let now = now_ms();
            match self
                .ctx
                .store
                .prune(
                    &self.spec,
                    now.saturating_sub(retention_ms),
                    self.ctx.config.prune_batch,
                    now,
                )
                .await
            {
                Ok(pruned) => {
                    if pruned.rows > 0 || pruned.docs > 0 {
                        tracing::info!(
                            projector = self.spec.name,
                            rows = pruned.rows,
                            docs = pruned.docs,
                            retention_floor = pruned.retention_floor,
                            "pruned the sync stream"
                        );
                        metrics::counter!("runtime_sync_rows_pruned_total", "topic" => self.spec.topic).increment(pruned.rows);
                        self.ctx.notifier.committed(self.spec.topic);
                    }
                    if pruned.rows < self.ctx.config.prune_batch
                        && pruned.docs < self.ctx.config.prune_batch
                    {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(projector = self.spec.name, error.message = %error, "pruning failed");
                    return;
                }
            }
        }
    }
}

struct LiveStep {
    cursor: GlobalCursor,
    committed: bool,
    events: u64,
    next: Next,
}

/// A difference between the stored documents and a fold of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    pub doc_key: String,
    pub problem: String,
}

/// One read model, type-erased, for the composition root and the CLI.
pub trait DynProjector: Send + Sync {
    fn spec(&self) -> ProjectorSpec;
    /// The aggregate types whose events it reads.
    fn aggregate_types(&self) -> &'static [&'static str];
    /// [`Runner::run`].
    fn run(
        &self,
        ctx: Arc<ProjectorContext>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
    /// [`Runner::run_until_rebuilt`].
    fn run_until_rebuilt(
        &self,
        ctx: Arc<ProjectorContext>,
        requested_at_ms: i64,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<Option<Swapped>, RunnerError>>;
    /// [`Runner::catch_up`].
    fn catch_up(&self, ctx: Arc<ProjectorContext>) -> BoxFuture<'static, Result<u64, RunnerError>>;
    /// Re-folds one entity's documents from the journal and rewrites those that differ
    /// (`reproject --run-id/--worker-id`).
    fn repair(
        &self,
        ctx: Arc<ProjectorContext>,
        aggregate_id: String,
    ) -> BoxFuture<'static, Result<Vec<(String, Repaired)>, RunnerError>>;
    /// Compares the stored documents with a fold of `events` (the whole journal in commit
    /// order).
    fn compare<'a>(
        &'a self,
        store: &'a SyncStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<Vec<Drift>, RunnerError>>;
}

/// [`DynProjector`] for projection `P`.
pub struct Typed<P>(PhantomData<P>);

impl<P> Default for Typed<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Folds one entity's events (up to `cursor`) into document writes.
async fn fold_entity<P: Projection>(
    journal: &AnyJournal,
    aggregate_id: &str,
    cursor: GlobalCursor,
) -> Result<Vec<DocWrite>, RunnerError> {
    let mut events = Vec::new();
    for aggregate_type in P::AGGREGATE_TYPES {
        events.extend(
            journal
                .load_stored(aggregate_type, aggregate_id, 0, usize::MAX)
                .await?
                .into_iter()
                .filter(|e| e.cursor <= cursor),
        );
    }
    events.sort_by_key(|e| e.cursor);
    let docs = crate::model::fold::<P>(&events)?;
    let mut writes = Vec::with_capacity(docs.len());
    for (key, (doc, version)) in docs {
        let (payload, payload_hash) = serialize_doc::<P>(&doc)?;
        writes.push(DocWrite {
            doc_key: key,
            doc_version: version,
            payload,
            payload_hash,
            owner: P::owner(&doc),
            projected_at_ms: P::projected_at(&doc).unix_micros() / 1000,
            last_row: None,
        });
    }
    Ok(writes)
}

impl<P: Projection> DynProjector for Typed<P> {
    fn spec(&self) -> ProjectorSpec {
        spec_of::<P>()
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        P::AGGREGATE_TYPES
    }

    fn run(
        &self,
        ctx: Arc<ProjectorContext>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(Runner::<P>::new(ctx).run(shutdown))
    }

    fn run_until_rebuilt(
        &self,
        ctx: Arc<ProjectorContext>,
        requested_at_ms: i64,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<Option<Swapped>, RunnerError>> {
        Box::pin(Runner::<P>::new(ctx).run_until_rebuilt(requested_at_ms, shutdown))
    }

    fn catch_up(&self, ctx: Arc<ProjectorContext>) -> BoxFuture<'static, Result<u64, RunnerError>> {
        Box::pin(Runner::<P>::new(ctx).catch_up())
    }

    fn repair(
        &self,
        ctx: Arc<ProjectorContext>,
        aggregate_id: String,
    ) -> BoxFuture<'static, Result<Vec<(String, Repaired)>, RunnerError>> {
        Box::pin(async move {
            let spec = spec_of::<P>();
            let journal = ctx.journal.clone();
            let computed = std::sync::Mutex::new(None);
            let result = ctx
                .store
                .repair_docs(&spec, now_ms(), P::DOCS_ARE_EVENTS, |cursor| {
                    let computed = &computed;
                    let journal = journal.clone();
                    let aggregate_id = aggregate_id.clone();
                    async move {
                        match fold_entity::<P>(&journal, &aggregate_id, cursor).await {
                            Ok(writes) => Ok(writes),
                            Err(error) => {
                                let message = error.to_string();
                                *computed.lock().expect("not poisoned") = Some(error);
                                Err(StoreError::Corrupt(message))
                            }
                        }
                    }
                })
                .await;
            match result {
                Ok(outcomes) => {
                    if outcomes
                        .iter()
                        .any(|(_, r)| matches!(r, Repaired::Written { .. }))
                    {
                        ctx.notifier.committed(spec.topic);
                    }
                    Ok(outcomes)
                }
                Err(store_error) => match computed.lock().expect("not poisoned").take() {
                    Some(error) => Err(error),
                    None => Err(RunnerError::Store(store_error)),
                },
            }
        })
    }

    fn compare<'a>(
        &'a self,
        store: &'a SyncStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<Vec<Drift>, RunnerError>> {
        Box::pin(async move {
            let spec = spec_of::<P>();
            let folded = crate::model::fold::<P>(events)?;
            let stored = store.all_docs(&spec).await?;
            let mut drift = Vec::new();
            let problem = |key: &str, text: String| Drift {
                topic: spec.topic.to_owned(),
                doc_key: key.to_owned(),
                problem: text,
            };
            let mut seen = std::collections::BTreeSet::new();
            for row in &stored {
                seen.insert(row.doc_key.clone());
                let Some((doc, version)) = folded.get(&row.doc_key) else {
                    drift.push(problem(
                        &row.doc_key,
                        "stored, but the journal folds to no such document".into(),
                    ));
                    continue;
                };
                let (_, hash) = serialize_doc::<P>(doc)?;
                if hash != row.payload_hash {
                    drift.push(problem(
                        &row.doc_key,
                        format!(
                            "payload differs: stored {} vs journal {hash}",
                            row.payload_hash
                        ),
                    ));
                } else if *version != row.doc_version {
                    drift.push(problem(
                        &row.doc_key,
                        format!(
                            "doc_version differs: stored {} vs journal {version}",
                            row.doc_version
                        ),
                    ));
                }
            }
            if !P::DOCS_ARE_EVENTS {
                for key in folded.keys() {
                    if !seen.contains(key) {
                        drift.push(problem(key, "missing from the read model".into()));
                    }
                }
            }
            Ok(drift)
        })
    }
}

/// The runtime's read models, in a fixed order.
pub fn all_projectors() -> Vec<Arc<dyn DynProjector>> {
    vec![
        Arc::new(Typed::<crate::run_summary::RunSummaries>::default()),
        Arc::new(Typed::<crate::worker_summary::WorkerSummaries>::default()),
        Arc::new(Typed::<crate::worker_events::WorkerEvents>::default()),
        Arc::new(Typed::<crate::payments::Payments>::default()),
        Arc::new(Typed::<crate::run_events::RunEvents>::default()),
        Arc::new(Typed::<crate::run_metadata::RunMetadata>::default()),
    ]
}

/// Runs [`Runner::catch_up`] for every projector, one after the other; returns the events read.
///
/// # Errors
/// The first failure.
pub async fn catch_up_all(ctx: &Arc<ProjectorContext>) -> Result<u64, RunnerError> {
    let mut read = 0;
    for projector in all_projectors() {
        read += projector.catch_up(ctx.clone()).await?;
    }
    Ok(read)
}

/// The specs of [`all_projectors`].
pub fn all_specs() -> Vec<ProjectorSpec> {
    all_projectors().iter().map(|p| p.spec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizon_retries_stay_short_then_back_off_to_the_poll() {
        let poll = Duration::from_millis(50);
        let mut retry = HorizonRetry::default();
        let delays: Vec<u128> = (0..22).map(|_| retry.next(poll).as_millis()).collect();
        let mut expected = vec![2; 16];
        expected.extend([4, 8, 16, 32, 50, 50]);
        assert_eq!(delays, expected);
        retry.reset();
        assert_eq!(retry.next(poll), Duration::from_millis(2));
        assert_eq!(
            HorizonRetry::default().next(Duration::from_millis(1)),
            Duration::from_millis(1),
            "never longer than the poll"
        );
    }
}

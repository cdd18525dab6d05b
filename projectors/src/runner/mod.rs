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
//!
//! # Layout
//! - this file: configuration, the shared context, errors, and [`Runner`]'s entry points
//!   ([`Runner::run`], [`Runner::run_until_rebuilt`], [`Runner::catch_up`]).
//! - `leader`: one leadership term: the leader's state (checkpoint and cursor, reset in one
//!   place), lease renewal, error recovery, waiting for the journal, pruning and lag metrics.
//! - `live`: the live step: read a batch after the cursor, fold it, commit it.
//! - `rebuild`: full rebuilds into the shadow table: beginning one, the read-ahead pipeline,
//!   and swapping in the new epoch.
//! - `fold`: folding a batch of events through the projection into stream rows and documents.
//! - `registry`: [`DynProjector`], the type-erased read models, entity repair and drift checks.

mod fold;
mod leader;
mod live;
mod rebuild;
mod registry;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::persist::SerializedEvent;
use engine::backoff::Backoff;
use engine::journal::{GlobalCursor, StoredEvent};
use engine::{AnyJournal, Journal, JournalError};
use lru::LruCache;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{Projection, ProjectionError};
use crate::notify::SyncNotifier;
use crate::store::{Checkpoint, ProjectorSpec, StoreError, Swapped, SyncStore};

use leader::Term;
use live::{LiveCursor, Next};
pub use registry::{all_projectors, all_specs, catch_up_all, Drift, DynProjector, Typed};

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
        let mut live = LiveCursor::at(checkpoint.cursor);
        let started = Instant::now();
        loop {
            let step = self.step_live(&live).await?;
            read += step.events;
            live.advance(&step);
            if matches!(step.next, Next::Busy) {
                continue;
            }
            if self.ctx.journal.count_after(live.read, 1).await? == 0 {
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
        if live.unpersisted() {
            self.commit_empty(&live).await?;
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
}

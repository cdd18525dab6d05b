//! One leadership term: the leader's state (its checkpoint and how far it read past the stored
//! cursor), lease renewal, recovery from a failed step, waiting for the journal to grow, and the
//! leader's periodic duties (pruning its topic, publishing lag metrics).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use engine::backoff::Backoff;
use engine::journal::GlobalCursor;
use engine::Journal;
use tokio_util::sync::CancellationToken;

use super::live::{LiveCursor, Next};
use super::{now_ms, Runner, RunnerError};
use crate::model::Projection;
use crate::store::{Checkpoint, StoreError, Swapped};

/// How a leadership term ended.
pub(super) enum Term {
    /// Shutdown: the lease was released.
    Stopped,
    /// Another process took the lease.
    Lost,
    /// (Rebuild-once mode) the rebuild finished.
    Rebuilt(Swapped),
}

/// What a leader knows between steps: its checkpoint as it last read it from the store, and how
/// far it has read the journal past the stored cursor. Whenever the leader stops trusting its
/// memory (a peer moved the cursor, a rebuild began or finished, a step's outcome is unknown) it
/// re-reads the checkpoint and calls [`LeaderState::reset`], which starts all of it over.
pub(super) struct LeaderState {
    pub(super) checkpoint: Checkpoint,
    pub(super) live: LiveCursor,
}

impl LeaderState {
    fn new(checkpoint: Checkpoint) -> Self {
        Self {
            live: LiveCursor::at(checkpoint.cursor),
            checkpoint,
        }
    }

    /// Continues from `fresh` (as stored), forgetting whatever was read past its cursor.
    pub(super) fn reset(&mut self, fresh: Checkpoint) {
        *self = Self::new(fresh);
    }
}

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

impl<P: Projection> Runner<P> {
    /// One leadership term.
    pub(super) async fn lead(
        &mut self,
        checkpoint: Checkpoint,
        shutdown: &CancellationToken,
        rebuild_once: bool,
    ) -> Term {
        let name = self.spec.name;
        let mut state = LeaderState::new(checkpoint);
        let mut appended = self.ctx.journal_appended.clone();
        let mut next_renew = Instant::now() + self.renew_every();
        let mut next_prune = Instant::now() + Duration::from_secs(1);
        let mut next_metrics = Instant::now();
        let mut caught_up_at = Instant::now();
        let mut error_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut horizon = HorizonRetry::default();
        loop {
            if shutdown.is_cancelled() {
                return self.stop(&state.live).await;
            }
            let now = Instant::now();
            if now >= next_renew {
                next_renew = now + self.renew_every();
                if let ControlFlow::Break(term) = self.renew(&mut state).await {
                    return term;
                }
            }
            if now >= next_metrics && state.checkpoint.rebuild.is_none() {
                next_metrics = now + Duration::from_secs(1);
                self.publish_lag(state.live.read, caught_up_at).await;
            }
            let step = if let Some(from) = state.checkpoint.rebuild.as_ref().map(|r| r.cursor) {
                match self
                    .rebuild_step(&mut state, from, shutdown, rebuild_once)
                    .await
                {
                    ControlFlow::Break(term) => return term,
                    ControlFlow::Continue(step) => step,
                }
            } else if state.checkpoint.rebuild_requested
                || state.checkpoint.projection_version != P::VERSION
            {
                match self.start_rebuild(&mut state).await {
                    ControlFlow::Break(term) => return term,
                    ControlFlow::Continue(step) => step,
                }
            } else if rebuild_once {
                // Asked to rebuild, but the rebuild already happened elsewhere.
                let _ = self.ctx.store.release(name, &self.ctx.instance).await;
                return Term::Stopped;
            } else {
                match self.step_live(&state.live).await {
                    Ok(live) => {
                        state.live.advance(&live);
                        if !matches!(live.next, Next::Busy) {
                            caught_up_at = Instant::now();
                        }
                        Ok(live.next)
                    }
                    Err(e) => Err(e),
                }
            };
            if now >= next_prune && state.checkpoint.rebuild.is_none() {
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
                    if let ControlFlow::Break(term) = self.recover(&mut state, &error).await {
                        return term;
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

    /// Ends the term on shutdown: persists the cursor read past the stored one and releases the
    /// lease.
    async fn stop(&self, live: &LiveCursor) -> Term {
        let name = self.spec.name;
        if live.unpersisted() {
            let _ = self.commit_empty(live).await;
        }
        if let Err(error) = self.ctx.store.release(name, &self.ctx.instance).await {
            tracing::warn!(projector = name, error.message = %error, "releasing the projector lease failed; it expires on its own");
        }
        Term::Stopped
    }

    /// Renews the lease and, while the stored cursor is where this leader left it, persists the
    /// cursor it read past it.
    async fn renew(&self, state: &mut LeaderState) -> ControlFlow<Term> {
        match self.acquire().await {
            Ok(Some(fresh)) => {
                if fresh.cursor != state.live.persisted {
                    // Someone moved the cursor (only possible after a lost lease): trust the
                    // store.
                    state.reset(fresh);
                } else {
                    state.checkpoint = fresh;
                    if state.live.unpersisted() {
                        match self.commit_empty(&state.live).await {
                            Ok(()) => state.live.mark_persisted(),
                            Err(StoreError::LeaseLost(_)) => return ControlFlow::Break(Term::Lost),
                            Err(_) => {}
                        }
                    }
                }
            }
            Ok(None) => return ControlFlow::Break(Term::Lost),
            Err(error) => {
                tracing::warn!(projector = self.spec.name, error.message = %error, "lease renewal failed");
            }
        }
        ControlFlow::Continue(())
    }

    /// After a failed step: counts and logs `error`, then continues from the stored checkpoint
    /// (the outcome of a failed commit is unknown), unless the lease is gone.
    async fn recover(&self, state: &mut LeaderState, error: &RunnerError) -> ControlFlow<Term> {
        let name = self.spec.name;
        metrics::counter!("runtime_projector_errors_total", "projector" => name, "kind" => error.label()).increment(1);
        tracing::error!(projector = name, error.message = %error, error.cause_chain = ?error, "projector step failed; retrying");
        // The outcome of a failed commit is unknown: continue from the stored cursor.
        match self.ctx.store.checkpoint(name).await {
            Ok(Some(fresh)) => {
                if fresh.lease_owner.as_deref() != Some(self.ctx.instance.as_str()) {
                    return ControlFlow::Break(Term::Lost);
                }
                state.reset(fresh);
            }
            Ok(None) => return ControlFlow::Break(Term::Lost),
            Err(_) => {}
        }
        ControlFlow::Continue(())
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

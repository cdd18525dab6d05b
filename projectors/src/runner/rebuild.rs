//! Full rebuilds: a leader whose checkpoint asks for one (`reproject --all`, or a new projection
//! version) begins it, projects the whole journal into the shadow table as a read-ahead
//! pipeline, and swaps the shadow in as the topic's new epoch.

use std::ops::ControlFlow;
use std::time::Instant;

use engine::journal::{GlobalCursor, StoredEvent};
use engine::Journal;
use tokio_util::sync::CancellationToken;

use super::leader::{LeaderState, Term};
use super::live::Next;
use super::{now_ms, Runner, RunnerError};
use crate::model::Projection;
use crate::store::{BatchCommit, StoreError, Target};

/// The shadow cache is dropped beyond this many documents (the batches then read them back).
const SHADOW_CACHE_LIMIT: usize = 200_000;

impl<P: Projection> Runner<P> {
    /// A leader's step when its checkpoint asks for a rebuild that has not begun: persists the
    /// live cursor it read ahead, begins the rebuild and continues from the fresh checkpoint.
    pub(super) async fn start_rebuild(
        &mut self,
        state: &mut LeaderState,
    ) -> ControlFlow<Term, Result<Next, RunnerError>> {
        let name = self.spec.name;
        tracing::info!(
            projector = name,
            stored_version = state.checkpoint.projection_version,
            version = P::VERSION,
            requested = state.checkpoint.rebuild_requested,
            "starting a full rebuild"
        );
        if state.live.unpersisted() {
            let _ = self.commit_empty(&state.live).await;
        }
        if let Err(e) = self
            .ctx
            .store
            .begin_rebuild(&self.spec, &self.ctx.instance, now_ms())
            .await
        {
            return ControlFlow::Continue(Err(RunnerError::Store(e)));
        }
        match self.ctx.store.checkpoint(name).await {
            Ok(Some(fresh)) => {
                state.reset(fresh);
                ControlFlow::Continue(Ok(Next::Busy))
            }
            Ok(None) => ControlFlow::Break(Term::Lost),
            Err(e) => ControlFlow::Continue(Err(RunnerError::Store(e))),
        }
    }

    /// A leader's step during a rebuild: projects the journal after `from` into the shadow and,
    /// once it is exhausted, swaps the shadow in as the new epoch and continues live from the
    /// fresh checkpoint (in rebuild-once mode: releases the lease and ends the term).
    pub(super) async fn rebuild_step(
        &mut self,
        state: &mut LeaderState,
        from: GlobalCursor,
        shutdown: &CancellationToken,
        rebuild_once: bool,
    ) -> ControlFlow<Term, Result<Next, RunnerError>> {
        let name = self.spec.name;
        metrics::gauge!("runtime_projector_rebuilding", "projector" => name).set(1.0);
        let (to, finished) = match self.rebuild_run(from, shutdown).await {
            Ok(ran) => ran,
            Err(e) => return ControlFlow::Continue(Err(e)),
        };
        if let Some(rebuild) = state.checkpoint.rebuild.as_mut() {
            rebuild.cursor = to;
        }
        if !finished {
            return ControlFlow::Continue(Ok(Next::Busy));
        }
        let swapped = match self
            .ctx
            .store
            .finish_rebuild(&self.spec, &self.ctx.instance, now_ms())
            .await
        {
            Ok(swapped) => swapped,
            Err(e) => return ControlFlow::Continue(Err(RunnerError::Store(e))),
        };
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
            Ok(Some(fresh)) => state.reset(fresh),
            _ => return ControlFlow::Break(Term::Lost),
        }
        if rebuild_once {
            let _ = self.ctx.store.release(name, &self.ctx.instance).await;
            return ControlFlow::Break(Term::Rebuilt(swapped));
        }
        ControlFlow::Continue(Ok(Next::Busy))
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
    pub(super) async fn rebuild_run(
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
}

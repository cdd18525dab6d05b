//! The live step: read the batch of the journal after the leader's cursor, fold it, and commit
//! its stream rows, documents and cursor in one transaction; and the cursor state that says how
//! far the leader has read past what its checkpoint stores.

use std::time::Instant;

use engine::journal::GlobalCursor;
use engine::notify::CommitStamps;
use engine::Journal;

use super::{now_ms, Runner, RunnerError};
use crate::model::Projection;
use crate::store::{BatchCommit, StoreError, Target};

/// Unix microseconds on the wall clock (events' `recorded_at` is on it).
fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What the leader should do after a step.
pub(super) enum Next {
    /// A full batch: go again at once.
    Busy,
    /// Caught up: wait for a notice (or the fallback poll).
    Idle { empty: bool },
}

/// What one live step did.
pub(super) struct LiveStep {
    /// The last event read (the cursor in memory).
    pub(super) cursor: GlobalCursor,
    /// Whether the step committed (and so persisted `cursor`).
    pub(super) committed: bool,
    /// Journal events read.
    pub(super) events: u64,
    pub(super) next: Next,
}

/// How far a leader has read the journal, against the cursor its checkpoint stores. A batch that
/// changes nothing for the read model moves `read` in memory only; its events stay `pending`
/// until a later commit (or the lease renewal's empty commit) persists the cursor with them.
/// Starting over from a stored cursor is [`LiveCursor::at`], so every field starts over there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LiveCursor {
    /// The last event read and folded.
    pub(super) read: GlobalCursor,
    /// The cursor as the checkpoint stores it.
    pub(super) persisted: GlobalCursor,
    /// Events read after `persisted` that the checkpoint does not count yet.
    pub(super) pending: u64,
}

impl LiveCursor {
    /// At the stored cursor, nothing read past it.
    pub(super) fn at(stored: GlobalCursor) -> Self {
        Self {
            read: stored,
            persisted: stored,
            pending: 0,
        }
    }

    /// Whether events were read past the stored cursor.
    pub(super) fn unpersisted(&self) -> bool {
        self.persisted != self.read
    }

    /// After the cursor read so far was committed.
    pub(super) fn mark_persisted(&mut self) {
        self.persisted = self.read;
        self.pending = 0;
    }

    /// After a live step.
    pub(super) fn advance(&mut self, step: &LiveStep) {
        self.read = step.cursor;
        if step.committed {
            self.mark_persisted();
        } else {
            self.pending += step.events;
        }
    }
}

impl<P: Projection> Runner<P> {
    /// Persists the cursor read past the stored one, with no rows or documents.
    pub(super) async fn commit_empty(&self, live: &LiveCursor) -> Result<(), StoreError> {
        self.ctx
            .store
            .commit(BatchCommit {
                spec: &self.spec,
                target: Target::Live,
                owner: &self.ctx.instance,
                from: live.persisted,
                to: live.read,
                events: live.pending,
                rows: Vec::new(),
                docs: Vec::new(),
                now_ms: now_ms(),
                lease_ttl_ms: self.ttl_ms(),
            })
            .await
            .map(|_| ())
    }

    /// Reads and projects one live batch after `live.read` (the stored cursor is
    /// `live.persisted`).
    pub(super) async fn step_live(&mut self, live: &LiveCursor) -> Result<LiveStep, RunnerError> {
        let started = Instant::now();
        let started_us = unix_micros();
        let batch = self.ctx.config.batch_size;
        let events = self.ctx.journal.read_all(live.read, batch).await?;
        let Some(last) = events.last() else {
            return Ok(LiveStep {
                cursor: live.read,
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
        let commit_started = Instant::now();
        let committed = self
            .ctx
            .store
            .commit(BatchCommit {
                spec: &self.spec,
                target: Target::Live,
                owner: &self.ctx.instance,
                from: live.persisted,
                to,
                events: live.pending + events.len() as u64,
                rows: folded.rows,
                docs: folded.docs,
                now_ms: now_ms(),
                lease_ttl_ms: self.ttl_ms(),
            })
            .await?;
        let commit_seconds = commit_started.elapsed().as_secs_f64();
        if rows > 0 {
            if let Some(first) = committed.first_watermark {
                // Before the notice, so the tailer it wakes finds the stamp.
                CommitStamps::global().committed(self.spec.topic, first);
            }
            self.ctx.notifier.committed(self.spec.topic);
        }
        let committed_us = unix_micros();
        metrics::counter!("runtime_projector_changes_total", "projector" => name).increment(rows);
        metrics::histogram!("runtime_projector_batch_seconds", "projector" => name)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("runtime_projector_commit_seconds", "projector" => name)
            .record(commit_seconds);
        let pickup = metrics::histogram!("runtime_projector_pickup_seconds", "projector" => name);
        let lag = metrics::histogram!("runtime_projection_lag_seconds", "projector" => name);
        for recorded in folded.recorded_us {
            pickup.record((started_us - recorded).max(0) as f64 / 1e6);
            lag.record((committed_us - recorded).max(0) as f64 / 1e6);
        }
        Ok(LiveStep {
            cursor: to,
            committed: true,
            events: events.len() as u64,
            next,
        })
    }
}

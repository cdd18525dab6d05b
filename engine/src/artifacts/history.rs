//! Re-executing a recorded run stream (the original runtime's workflow histories, or a
//! REPLAY.jsonl file) through the real command engine, so its artifacts are produced by the same
//! code path as live runs. Each stream event becomes the command that emits it
//! ([`aggregates::run::command_for_stream_event`], declared beside the run's events):
//! `run.started` ← `StartRun{source}`, `run.cancel_requested` ← `RequestCancel{reason}`,
//! `run.finished` ← `FinishRun{status, reason_class, reason, error_code}` and any other type ←
//! `AppendFrame` of that type (frame id = the event's idempotency key, else `replay-seq-<seq>`).

use aggregates::canonical::hash_canonical;
use aggregates::ids::{Owner, RunId, ThreadId, UserId};
use aggregates::run::{command_for_stream_event, Lifecycle, Run, RunCommand, RunStatus};
use aggregates::Timestamp;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::record::RunRecord;
use super::recorder::load_run_record;
use super::replay::replay_hash;
use super::trajectory::trajectory_hash;
use crate::clock::ManualClock;
use crate::command::{CommandContext, Engine, IdempotencyRequest};

/// `schema` of the original runtime's workflow history corpus.
pub const HISTORY_SCHEMA: &str = "openagents.runtime.workflow_history_compat.v1";

#[derive(Clone, Debug, Deserialize)]
pub struct HistoryCorpus {
    pub schema: String,
    pub version: u32,
    pub fixtures: Vec<HistoryFixture>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HistoryFixture {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub run_id: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub events: Vec<HistoryEvent>,
    pub expected: HistoryExpected,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HistoryEvent {
    pub seq: u64,
    pub event_type: String,
    #[serde(default)]
    pub payload: Map<String, Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub recorded_at: Timestamp,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct HistoryExpected {
    pub final_status: String,
    pub replay_hash: String,
    pub trajectory_hash: String,
    pub runtime_event_count: u64,
}

/// What re-executing a history produced.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryOutcome {
    pub record: RunRecord,
    pub final_status: String,
    pub replay_hash: String,
    pub trajectory_hash: String,
    pub runtime_event_count: u64,
}

impl HistoryOutcome {
    /// The fields of `expected` that differ: `(field, expected, actual)`.
    pub fn mismatches(&self, expected: &HistoryExpected) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let mut check = |field, e: String, a: String| {
            if e != a {
                out.push((field, e, a));
            }
        };
        check(
            "final_status",
            expected.final_status.clone(),
            self.final_status.clone(),
        );
        check(
            "trajectory_hash",
            expected.trajectory_hash.clone(),
            self.trajectory_hash.clone(),
        );
        check(
            "replay_hash",
            expected.replay_hash.clone(),
            self.replay_hash.clone(),
        );
        check(
            "runtime_event_count",
            expected.runtime_event_count.to_string(),
            self.runtime_event_count.to_string(),
        );
        out
    }
}

/// Why a stream could not be re-executed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    Invalid(String),
    #[error("seq {seq} ({event_type}) was rejected: {message}")]
    Rejected {
        seq: u64,
        event_type: String,
        message: String,
    },
    #[error("seq {seq} ({event_type}) produced no event")]
    NoEvent { seq: u64, event_type: String },
}

/// The command that emits a stream event (see [`command_for_stream_event`], declared beside
/// the events themselves so a new run event names it).
///
/// # Errors
/// [`HistoryError::Invalid`] when the payload cannot have been produced by that command.
pub fn stream_command(
    seq: u64,
    event_type: &str,
    payload: &Map<String, Value>,
    idempotency_key: Option<&str>,
) -> Result<RunCommand, HistoryError> {
    command_for_stream_event(seq, event_type, payload, idempotency_key)
        .map_err(|m| HistoryError::Invalid(format!("seq {seq} ({event_type}): {m}")))
}

/// One stream event to re-execute.
#[derive(Clone, Debug)]
pub struct StreamStep<'a> {
    pub seq: u64,
    pub event_type: &'a str,
    pub payload: &'a Map<String, Value>,
    /// For `run.*` events, sent as the command's Idempotency-Key (frames carry theirs as frame id).
    pub idempotency_key: Option<&'a str>,
    pub recorded_at: Timestamp,
}

/// Creates run `run_id` at `created_at` and re-executes `steps` through `engine` with the clock
/// set to each step's `recorded_at`; returns the run's artifacts.
///
/// # Errors
/// [`HistoryError`] when a step is rejected or produces no event.
pub async fn reexecute_stream(
    engine: &Engine,
    clock: &ManualClock,
    run_id: &str,
    created_at: Timestamp,
    metadata: &Map<String, Value>,
    steps: &[StreamStep<'_>],
) -> Result<HistoryOutcome, HistoryError> {
    let run = RunId::parse(run_id).map_err(|e| HistoryError::Invalid(e.to_string()))?;
    let context = CommandContext {
        actor: "system:replay".into(),
        ..CommandContext::default()
    };
    clock.set(created_at);
    engine
        .execute::<Run>(
            run.as_str(),
            RunCommand::CreateRun {
                run_id: run.clone(),
                thread_id: ThreadId::parse(format!("thread-{run_id}"))
                    .map_err(|e| HistoryError::Invalid(e.to_string()))?,
                owner: Owner::User(UserId::parse("replay").expect("valid literal")),
                metadata: metadata.clone(),
                org_id: None,
            },
            &context,
        )
        .await
        .map_err(|e| HistoryError::Rejected {
            seq: 0,
            event_type: "run.created".into(),
            message: e.to_string(),
        })?;
    for step in steps {
        let command = stream_command(
            step.seq,
            step.event_type,
            step.payload,
            step.idempotency_key,
        )?;
        let mut context = context.clone();
        let expected = Lifecycle::of_stream_type(step.event_type);
        if expected.is_some() {
            context.idempotency = step.idempotency_key.map(|key| IdempotencyRequest {
                scope: format!("replay:{run_id}"),
                key: key.to_owned(),
                request_hash: hash_canonical(
                    &json!({"event_type": step.event_type, "payload": step.payload}),
                ),
            });
        }
        clock.set(step.recorded_at);
        let outcome = engine
            .execute::<Run>(run.as_str(), command, &context)
            .await
            .map_err(|e| HistoryError::Rejected {
                seq: step.seq,
                event_type: step.event_type.to_owned(),
                message: e.to_string(),
            })?;
        let Some(emitted) = outcome.events.first() else {
            return Err(HistoryError::NoEvent {
                seq: step.seq,
                event_type: step.event_type.to_owned(),
            });
        };
        // Re-executed as the same kind of stream event: the same lifecycle event, or a frame
        // (never `run.created`, which is not in the stream).
        let actual = emitted.payload.lifecycle();
        if actual != expected || emitted.payload.runtime_view().is_none() {
            return Err(HistoryError::Rejected {
                seq: step.seq,
                event_type: step.event_type.to_owned(),
                message: format!("re-executed as {expected:?} but emitted {actual:?}"),
            });
        }
    }
    let record = load_run_record(engine, run.as_str())
        .await
        .map_err(|e| HistoryError::Invalid(e.to_string()))?
        .ok_or_else(|| HistoryError::Invalid("the run vanished".into()))?;
    Ok(HistoryOutcome {
        final_status: record.status.as_str().to_owned(),
        replay_hash: replay_hash(&record),
        trajectory_hash: trajectory_hash(&record.events),
        runtime_event_count: record.events.len() as u64,
        record,
    })
}

/// Re-executes one workflow history of the original runtime.
///
/// # Errors
/// See [`reexecute_stream`].
pub async fn reexecute_history(
    engine: &Engine,
    clock: &ManualClock,
    fixture: &HistoryFixture,
) -> Result<HistoryOutcome, HistoryError> {
    let steps: Vec<StreamStep<'_>> = fixture
        .events
        .iter()
        .map(|e| StreamStep {
            seq: e.seq,
            event_type: &e.event_type,
            payload: &e.payload,
            idempotency_key: e.idempotency_key.as_deref(),
            recorded_at: e.recorded_at,
        })
        .collect();
    reexecute_stream(
        engine,
        clock,
        &fixture.run_id,
        fixture.created_at,
        &fixture.metadata,
        &steps,
    )
    .await
}

/// The final status a finished run reports in histories (`succeeded`, `failed`, `canceled`, or
/// the open status).
pub fn status_name(status: RunStatus) -> &'static str {
    status.as_str()
}

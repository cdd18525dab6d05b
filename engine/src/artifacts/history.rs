//! Re-executing a recorded run stream (the original runtime's workflow histories, or a
//! REPLAY.jsonl file) through the real command engine, so its artifacts are produced by the same
//! code path as live runs. Each stream event becomes the command that emits it:
//! `run.started` ← `StartRun{source}`, `run.cancel_requested` ← `RequestCancel{reason}`,
//! `run.finished` ← `FinishRun{status, reason_class, reason, error_code}` and any other type ←
//! `AppendFrame` of that type (frame id = the event's idempotency key, else `replay-seq-<seq>`).

use aggregates::canonical::hash_canonical;
use aggregates::ids::{FrameId, Owner, RunId, ThreadId, UserId};
use aggregates::run::{Outcome as RunOutcome, Run, RunCommand, RunEvent, RunStatus};
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

fn str_field(payload: &Map<String, Value>, key: &str) -> Option<String> {
    payload.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Which command re-emits a stream event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emitter {
    StartRun,
    RequestCancel,
    FinishRun,
    AppendFrame,
}

/// The command that emitted `event`; `None` for `run.created`, the run's birth record, which is
/// not part of its stream. Exhaustive over [`RunEvent`]: a new run event does not compile until
/// replay says which command re-emits it (and [`emitter_for`] which stream type names it),
/// instead of silently re-executing it as a frame of that type.
fn emitter_of(event: &RunEvent) -> Option<Emitter> {
    match event {
        RunEvent::RunCreated { .. } => None,
        RunEvent::RunStarted { .. } => Some(Emitter::StartRun),
        RunEvent::FrameAppended { .. } => Some(Emitter::AppendFrame),
        RunEvent::CancelRequested { .. } => Some(Emitter::RequestCancel),
        RunEvent::RunFinished { .. } => Some(Emitter::FinishRun),
    }
}

/// The command that emits a stream event of `event_type` (see [`RunEvent::runtime_view`]): the
/// run's own `run.*` types, every other type is a frame.
fn emitter_for(event_type: &str) -> Emitter {
    match event_type {
        "run.started" => Emitter::StartRun,
        "run.cancel_requested" => Emitter::RequestCancel,
        "run.finished" => Emitter::FinishRun,
        _ => Emitter::AppendFrame,
    }
}

/// The command that emits a stream event.
///
/// # Errors
/// [`HistoryError::Invalid`] when the payload cannot have been produced by that command.
pub fn stream_command(
    seq: u64,
    event_type: &str,
    payload: &Map<String, Value>,
    idempotency_key: Option<&str>,
) -> Result<RunCommand, HistoryError> {
    let invalid = |m: String| HistoryError::Invalid(format!("seq {seq} ({event_type}): {m}"));
    Ok(match emitter_for(event_type) {
        Emitter::StartRun => RunCommand::StartRun {
            source: str_field(payload, "source").unwrap_or_else(|| "runtime".into()),
        },
        Emitter::RequestCancel => RunCommand::RequestCancel {
            reason: str_field(payload, "reason").unwrap_or_default(),
            requested_by: "replay".into(),
        },
        Emitter::FinishRun => RunCommand::FinishRun {
            outcome: match payload.get("status").and_then(Value::as_str) {
                Some("succeeded") => RunOutcome::Succeeded,
                Some("failed") => RunOutcome::Failed,
                Some("canceled") => RunOutcome::Canceled,
                other => return Err(invalid(format!("unknown status {other:?}"))),
            },
            reason_class: str_field(payload, "reason_class"),
            reason: str_field(payload, "reason"),
            error_code: str_field(payload, "error_code"),
        },
        Emitter::AppendFrame => RunCommand::AppendFrame {
            frame_id: FrameId::parse(
                idempotency_key
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("replay-seq-{seq}")),
            )
            .map_err(|e| invalid(e.to_string()))?,
            frame_type: event_type.to_owned(),
            payload: payload.clone(),
            occurred_at: None,
            expected_seq: Some(seq),
        },
    })
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
        if step.event_type.starts_with("run.") {
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
        let expected = emitter_for(step.event_type);
        let actual = emitter_of(&emitted.payload);
        if actual != Some(expected) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_event_is_re_executed_by_the_command_that_emitted_it() {
        let at = Timestamp::from_unix_seconds(1_771_000_000).unwrap();
        let events = [
            RunEvent::RunStarted {
                source: "runtime".into(),
                started_at: at,
            },
            RunEvent::FrameAppended {
                frame_id: FrameId::parse("f1").unwrap(),
                frame_type: "text_delta".into(),
                payload: Map::new(),
                payload_hash: String::new(),
                occurred_at: None,
                appended_at: at,
            },
            RunEvent::CancelRequested {
                reason: "stop".into(),
                requested_by: "user".into(),
                requested_at: at,
            },
            RunEvent::RunFinished {
                status: RunStatus::Canceled,
                reason_class: None,
                reason: None,
                error_code: None,
                finished_at: at,
            },
        ];
        for event in &events {
            let view = event.runtime_view().expect("in the stream");
            assert_eq!(
                Some(emitter_for(&view.event_type)),
                emitter_of(event),
                "{}",
                view.event_type
            );
        }
    }
}

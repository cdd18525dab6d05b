//! Events of a run. Past-tense names; `event_type()` strings and field names are a storage
//! format and never change: a new shape gets a new `event_version` and an upcaster.
//!
//! Everything a new event must declare is here, in matches the compiler checks: its time
//! ([`RunEvent::at`]), the status it leaves the run in ([`RunEvent::status_after`]), its place
//! in the run's stream ([`RunEvent::lifecycle`], [`Lifecycle`]) with its stream view
//! ([`RunEvent::runtime_view`]) and the command that re-emits it on replay
//! ([`command_for_stream_event`]).

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{FrameId, OrgId, Owner, RunId, ThreadId};
use crate::run::{Outcome, RunCommand, RunStatus};
use crate::Timestamp;

/// Current version of every run event shape.
pub const RUN_EVENT_VERSION: &str = "1.0";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    /// The run exists. Journal sequence 1; it is the run's birth record, not part of the run's
    /// event stream, so it has no run `seq` (run seq = journal sequence - 1).
    RunCreated {
        run_id: RunId,
        thread_id: ThreadId,
        owner: Owner,
        /// Added after v1.0 shapes were stored: absent in old events (serde default), and left out
        /// of the stored JSON when `None` so payloads without a tenant stay byte-identical.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        org_id: Option<OrgId>,
        metadata: Map<String, Value>,
        created_at: Timestamp,
    },
    RunStarted {
        source: String,
        started_at: Timestamp,
    },
    FrameAppended {
        frame_id: FrameId,
        frame_type: String,
        payload: Map<String, Value>,
        /// `sha256:` hash of the canonical `{type, payload}`, the frame's identity for replays.
        payload_hash: String,
        /// When the producer says the frame happened, if it said.
        occurred_at: Option<Timestamp>,
        appended_at: Timestamp,
    },
    CancelRequested {
        reason: String,
        requested_by: String,
        requested_at: Timestamp,
    },
    RunFinished {
        /// `succeeded`, `failed` or `canceled`.
        status: RunStatus,
        /// The reason class the caller gave, if any ([`RunEvent::reason_class`] applies the
        /// default). Kept as given so the runtime payload reproduces the request exactly.
        reason_class: Option<String>,
        reason: Option<String>,
        error_code: Option<String>,
        finished_at: Timestamp,
    },
}

/// The run's own events in its stream; every other stream event is a frame, whatever its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter)]
pub enum Lifecycle {
    Started,
    CancelRequested,
    Finished,
}

impl Lifecycle {
    /// The event's `type` in the run's stream (and its journal `event_type`).
    pub const fn stream_type(self) -> &'static str {
        match self {
            Lifecycle::Started => "run.started",
            Lifecycle::CancelRequested => "run.cancel_requested",
            Lifecycle::Finished => "run.finished",
        }
    }

    /// The lifecycle event a stream type names; `None` for a frame's type.
    pub fn of_stream_type(event_type: &str) -> Option<Self> {
        use strum::IntoEnumIterator as _;
        Self::iter().find(|kind| kind.stream_type() == event_type)
    }
}

/// The command that emits a stream event of `event_type` with `payload` (the inverse of
/// [`RunEvent::runtime_view`]), for replaying a recorded stream through the engine. A frame's
/// id is its `idempotency_key`, else `replay-seq-<seq>`, and it must land at `seq`.
///
/// # Errors
/// A message when the payload cannot have been produced by that command.
pub fn command_for_stream_event(
    seq: u64,
    event_type: &str,
    payload: &Map<String, Value>,
    idempotency_key: Option<&str>,
) -> Result<RunCommand, String> {
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(match Lifecycle::of_stream_type(event_type) {
        Some(Lifecycle::Started) => RunCommand::StartRun {
            source: text("source").unwrap_or_else(|| "runtime".into()),
        },
        Some(Lifecycle::CancelRequested) => RunCommand::RequestCancel {
            reason: text("reason").unwrap_or_default(),
            requested_by: "replay".into(),
        },
        Some(Lifecycle::Finished) => RunCommand::FinishRun {
            outcome: match payload.get("status").and_then(Value::as_str) {
                Some("succeeded") => Outcome::Succeeded,
                Some("failed") => Outcome::Failed,
                Some("canceled") => Outcome::Canceled,
                other => return Err(format!("unknown status {other:?}")),
            },
            reason_class: text("reason_class"),
            reason: text("reason"),
            error_code: text("error_code"),
        },
        None => RunCommand::AppendFrame {
            frame_id: FrameId::parse(
                idempotency_key
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("replay-seq-{seq}")),
            )
            .map_err(|e| e.to_string())?,
            frame_type: event_type.to_owned(),
            payload: payload.clone(),
            occurred_at: None,
            expected_seq: Some(seq),
        },
    })
}

impl RunEvent {
    /// Which lifecycle event this is in the run's stream; `None` for a frame and for
    /// `run.created` (not in the stream at all: see [`RunEvent::runtime_view`]).
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        match self {
            RunEvent::RunCreated { .. } | RunEvent::FrameAppended { .. } => None,
            RunEvent::RunStarted { .. } => Some(Lifecycle::Started),
            RunEvent::CancelRequested { .. } => Some(Lifecycle::CancelRequested),
            RunEvent::RunFinished { .. } => Some(Lifecycle::Finished),
        }
    }

    /// The status the run is in after this event; `None` when the event leaves it unchanged.
    pub fn status_after(&self) -> Option<RunStatus> {
        match self {
            RunEvent::RunCreated { .. } => Some(RunStatus::Created),
            RunEvent::RunStarted { .. } => Some(RunStatus::Running),
            RunEvent::FrameAppended { .. } => None,
            RunEvent::CancelRequested { .. } => Some(RunStatus::Canceling),
            RunEvent::RunFinished { status, .. } => Some(*status),
        }
    }

    /// When the event happened (the stamp of the command that produced it).
    pub fn at(&self) -> Timestamp {
        match self {
            RunEvent::RunCreated { created_at, .. } => *created_at,
            RunEvent::RunStarted { started_at, .. } => *started_at,
            RunEvent::FrameAppended { appended_at, .. } => *appended_at,
            RunEvent::CancelRequested { requested_at, .. } => *requested_at,
            RunEvent::RunFinished { finished_at, .. } => *finished_at,
        }
    }
}

/// The default reason class of a terminal status (`completed`, `cancel_requested`,
/// `execution_failed`).
pub fn default_reason_class(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "completed",
        RunStatus::Canceled => "cancel_requested",
        _ => "execution_failed",
    }
}

/// How a run event appears in the run's *runtime event stream*: the SSE stream, the trajectory
/// hash, REPLAY.jsonl and receipts. The stored event carries more (timestamps, hashes, who asked);
/// this view is what the original contract exposes and what its compat hashes pin.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeEventView {
    /// `run.started`, `run.cancel_requested`, `run.finished`, or a frame's own type
    /// (`user_message`, `text_delta`, `tool_call`, …).
    pub event_type: String,
    /// The payload, with keys in a fixed order (serde_json keeps insertion order here).
    pub payload: Map<String, Value>,
    /// The event's natural idempotency key (a frame's `frame_id`); the engine falls back to the
    /// command's `Idempotency-Key` from the event metadata.
    pub natural_key: Option<String>,
}

impl RunEvent {
    /// The effective reason class of a `RunFinished` (given or defaulted); `None` for others.
    pub fn reason_class(&self) -> Option<String> {
        match self {
            RunEvent::RunFinished {
                status,
                reason_class,
                ..
            } => Some(
                reason_class
                    .clone()
                    .unwrap_or_else(|| default_reason_class(*status).to_owned()),
            ),
            _ => None,
        }
    }

    /// [`RunEvent::runtime_view`], moving a frame's payload instead of cloning it (for callers
    /// that are done with the event, such as a streaming export).
    pub fn into_runtime_view(self) -> Option<RuntimeEventView> {
        match self {
            RunEvent::FrameAppended {
                frame_id,
                frame_type,
                payload,
                ..
            } => Some(RuntimeEventView {
                event_type: frame_type,
                payload,
                natural_key: Some(frame_id.to_string()),
            }),
            other => other.runtime_view(),
        }
    }

    /// The runtime-stream view of this event; `None` for `run.created`, which is the run's birth
    /// record and not part of its stream (it has no run `seq`).
    pub fn runtime_view(&self) -> Option<RuntimeEventView> {
        let mut payload = Map::new();
        let mut natural_key = None;
        let event_type = match self {
            RunEvent::RunCreated { .. } => return None,
            RunEvent::RunStarted { source, .. } => {
                payload.insert("source".into(), Value::String(source.clone()));
                Lifecycle::Started.stream_type().to_owned()
            }
            RunEvent::FrameAppended {
                frame_id,
                frame_type,
                payload: frame_payload,
                ..
            } => {
                payload = frame_payload.clone();
                natural_key = Some(frame_id.to_string());
                frame_type.clone()
            }
            RunEvent::CancelRequested { reason, .. } => {
                payload.insert("reason".into(), Value::String(reason.clone()));
                Lifecycle::CancelRequested.stream_type().to_owned()
            }
            RunEvent::RunFinished {
                status,
                reason_class,
                reason,
                error_code,
                ..
            } => {
                payload.insert("status".into(), Value::String(status.as_str().to_owned()));
                for (key, value) in [
                    ("reason_class", reason_class),
                    ("reason", reason),
                    ("error_code", error_code),
                ] {
                    if let Some(value) = value {
                        payload.insert(key.into(), Value::String(value.clone()));
                    }
                }
                Lifecycle::Finished.stream_type().to_owned()
            }
        };
        Some(RuntimeEventView {
            event_type,
            payload,
            natural_key,
        })
    }
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> String {
        match self {
            RunEvent::RunCreated { .. } => "run.created",
            RunEvent::RunStarted { .. } => "run.started",
            RunEvent::FrameAppended { .. } => "run.frame_appended",
            RunEvent::CancelRequested { .. } => "run.cancel_requested",
            RunEvent::RunFinished { .. } => "run.finished",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        RUN_EVENT_VERSION.to_owned()
    }
}

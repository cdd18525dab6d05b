//! The Run aggregate: one execution of an agent on a thread, from creation to a terminal state.
//!
//! ```text
//! created ──start──▶ running ──finish(succeeded|failed)──▶ succeeded | failed
//!    │                  │
//!    └──cancel──▶ canceling ◀──cancel──┘
//!                   └──finish(canceled|failed)──▶ canceled | failed
//! ```
//! Frames may be appended in any non-terminal state (input arrives before the run starts, late
//! tool results arrive while canceling) and never reopen a terminal run. Every event after
//! `run.created` gets the next run `seq` (1, 2, 3 … with no gaps).

mod commands;
mod error;
mod events;
mod upcast;

use std::collections::BTreeMap;
use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use commands::{Outcome, RunCommand};
pub use error::RunError;
pub use events::{
    command_for_stream_event, default_reason_class, Lifecycle, RunEvent, RuntimeEventView,
    RUN_EVENT_VERSION,
};
pub use upcast::{upcast_run_event, LEGACY_RUN_EVENT_VERSION};

use crate::canonical::hash_canonical;
use crate::ids::{FrameId, OrgId, Owner, RunId, ThreadId};
use crate::{RuntimeAggregate, Stamped, Timestamp};

/// Longest accepted frame type.
pub const MAX_FRAME_TYPE_LEN: usize = 64;

/// Where a run is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Created,
    Running,
    Canceling,
    Succeeded,
    Failed,
    Canceled,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Created => "created",
            RunStatus::Running => "running",
            RunStatus::Canceling => "canceling",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who the run is and where it stands; set by `run.created`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Identity {
    run_id: RunId,
    thread_id: ThreadId,
    owner: Owner,
    #[serde(default)]
    org_id: Option<OrgId>,
    created_at: Timestamp,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    identity: Option<Identity>,
    status: Option<RunStatus>,
    /// Seq of the last run event (0 before the first one after creation).
    latest_seq: u64,
    updated_at: Timestamp,
    cancel_requested: bool,
    /// frame_id -> (payload hash, seq) of every stored frame, for idempotent re-sends.
    frames: BTreeMap<FrameId, (String, u64)>,
}

/// Estimated bytes of one entry of a run's frame index (two `String`s, a seq and a map node).
const FRAME_INDEX_ENTRY_BYTES: usize = 2 * 24 + 8 + 48 + 64 + 32;

/// A cheap view of a run for responses.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub run_id: Option<RunId>,
    pub thread_id: Option<ThreadId>,
    pub owner: Option<Owner>,
    pub org_id: Option<OrgId>,
    pub status: Option<RunStatus>,
    pub latest_seq: u64,
    pub created_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    pub cancel_requested: bool,
}

impl RunSummary {
    pub fn exists(&self) -> bool {
        self.status.is_some()
    }
}

/// Fingerprint of a frame's content: type and payload, canonically hashed.
pub fn frame_payload_hash(frame_type: &str, payload: &Map<String, Value>) -> String {
    hash_canonical(&json!({ "type": frame_type, "payload": payload }))
}

/// Frame types with this prefix are reserved for the run's lifecycle events ([`Lifecycle`]).
pub const RESERVED_FRAME_PREFIX: &str = "run.";

/// Checks a frame's type and the fields that well-known frame types require.
///
/// # Errors
/// [`RunError::InvalidFrame`] naming the offending field.
pub fn validate_frame(frame_type: &str, payload: &Map<String, Value>) -> Result<(), RunError> {
    let invalid = |msg: String| Err(RunError::InvalidFrame(msg));
    if frame_type.is_empty() || frame_type.len() > MAX_FRAME_TYPE_LEN {
        return invalid(format!("type must be 1 to {MAX_FRAME_TYPE_LEN} characters"));
    }
    if !frame_type
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
    {
        return invalid("type may only contain letters, digits and _ - . : /".into());
    }
    // The stream shows lifecycle events and frames side by side by `type`, and replay turns a
    // `run.*` type back into its lifecycle command: a frame may not take one, today's or a
    // future one's.
    if frame_type.starts_with(RESERVED_FRAME_PREFIX) {
        return invalid(format!(
            "types starting with {RESERVED_FRAME_PREFIX:?} are the run's own events"
        ));
    }
    let require_string = |field: &str| -> Result<(), RunError> {
        match payload.get(field) {
            Some(Value::String(_)) => Ok(()),
            _ => Err(RunError::InvalidFrame(format!(
                "a {frame_type} frame needs payload.{field} as a string"
            ))),
        }
    };
    match frame_type {
        "user_message" => require_string("text"),
        "text_delta" => require_string("delta"),
        "tool_call" => {
            require_string("tool_call_id")?;
            require_string("name")
        }
        "tool_result" => require_string("tool_call_id"),
        "usage" => {
            for (key, value) in payload {
                let ok = match value {
                    Value::Number(n) => n.as_f64().is_some_and(|f| f >= 0.0),
                    Value::String(_) | Value::Null => true,
                    _ => false,
                };
                if !ok {
                    return invalid(format!("usage payload.{key} must be a non-negative number"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Run {
    fn status(&self) -> Result<RunStatus, RunError> {
        self.status.ok_or(RunError::NotFound)
    }

    fn handle_command(
        &self,
        at: Timestamp,
        command: RunCommand,
    ) -> Result<Option<RunEvent>, RunError> {
        if let RunCommand::CreateRun {
            run_id,
            thread_id,
            owner,
            org_id,
            metadata,
        } = command
        {
            return match &self.identity {
                Some(existing) if existing.thread_id == thread_id && existing.owner == owner => {
                    Ok(None)
                }
                Some(_) => Err(RunError::AlreadyExists),
                None => Ok(Some(RunEvent::RunCreated {
                    run_id,
                    thread_id,
                    owner,
                    org_id,
                    metadata,
                    created_at: at,
                })),
            };
        }
        let status = self.status()?;
        match command {
            RunCommand::CreateRun { .. } => unreachable!("handled above"),
            RunCommand::StartRun { source } => match status {
                RunStatus::Created => Ok(Some(RunEvent::RunStarted {
                    source,
                    started_at: at,
                })),
                RunStatus::Running => Ok(None),
                RunStatus::Canceling => Err(RunError::CancelRequested),
                terminal => Err(RunError::Terminal { status: terminal }),
            },
            RunCommand::AppendFrame {
                frame_id,
                frame_type,
                payload,
                occurred_at,
                expected_seq,
            } => {
                validate_frame(&frame_type, &payload)?;
                let payload_hash = frame_payload_hash(&frame_type, &payload);
                if let Some((stored, _)) = self.frames.get(&frame_id) {
                    return if *stored == payload_hash {
                        Ok(None)
                    } else {
                        Err(RunError::FrameConflict { frame_id })
                    };
                }
                if status.is_terminal() {
                    return Err(RunError::Terminal { status });
                }
                let next = self.latest_seq + 1;
                if let Some(expected) = expected_seq {
                    if expected != next {
                        return Err(RunError::SeqMismatch { expected, next });
                    }
                }
                Ok(Some(RunEvent::FrameAppended {
                    frame_id,
                    frame_type,
                    payload,
                    payload_hash,
                    occurred_at,
                    appended_at: at,
                }))
            }
            RunCommand::RequestCancel {
                reason,
                requested_by,
            } => {
                if status.is_terminal() || self.cancel_requested {
                    Ok(None)
                } else {
                    Ok(Some(RunEvent::CancelRequested {
                        reason,
                        requested_by,
                        requested_at: at,
                    }))
                }
            }
            RunCommand::FinishRun {
                outcome,
                reason_class,
                reason,
                error_code,
            } => {
                let target = match outcome {
                    Outcome::Succeeded => RunStatus::Succeeded,
                    Outcome::Failed => RunStatus::Failed,
                    Outcome::Canceled => RunStatus::Canceled,
                };
                if status.is_terminal() {
                    return if status == target {
                        Ok(None)
                    } else {
                        Err(RunError::Terminal { status })
                    };
                }
                match (status, target) {
                    (RunStatus::Created, RunStatus::Succeeded) => Err(RunError::NotStarted),
                    (RunStatus::Canceling, RunStatus::Succeeded) => Err(RunError::CancelRequested),
                    (RunStatus::Created | RunStatus::Running, RunStatus::Canceled) => {
                        Err(RunError::CancelNotRequested)
                    }
                    _ => Ok(Some(RunEvent::RunFinished {
                        status: target,
                        reason_class,
                        reason,
                        error_code,
                        finished_at: at,
                    })),
                }
            }
        }
    }
}

impl Aggregate for Run {
    const TYPE: &'static str = "run";
    type Command = Stamped<RunCommand>;
    type Event = RunEvent;
    type Error = RunError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let Some(event) = self.handle_command(command.at, command.command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.updated_at = event.at();
        if let Some(status) = event.status_after() {
            self.status = Some(status);
        }
        match event {
            RunEvent::RunCreated {
                run_id,
                thread_id,
                owner,
                org_id,
                created_at,
                ..
            } => {
                self.identity = Some(Identity {
                    run_id,
                    thread_id,
                    owner,
                    org_id,
                    created_at,
                });
                return;
            }
            RunEvent::RunStarted { .. } | RunEvent::RunFinished { .. } => {}
            RunEvent::FrameAppended {
                frame_id,
                payload_hash,
                ..
            } => {
                self.frames
                    .insert(frame_id, (payload_hash, self.latest_seq + 1));
            }
            RunEvent::CancelRequested { .. } => self.cancel_requested = true,
        }
        self.latest_seq += 1;
    }
}

impl RuntimeAggregate for Run {
    type Action = RunCommand;
    type Summary = RunSummary;

    /// The inline size plus the frame index (id up to 128 bytes, 64-hex hash, map node), which
    /// grows with every frame: what makes a long run heavy in the cache.
    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.frames.len() * FRAME_INDEX_ENTRY_BYTES
    }

    /// A re-sent frame: the journal sequence of the stored one.
    fn recorded_sequence(&self, action: &RunCommand) -> Option<u64> {
        match action {
            RunCommand::AppendFrame { frame_id, .. } => self
                .frames
                .get(frame_id)
                .map(|(_, seq)| journal_sequence_of(*seq)),
            _ => None,
        }
    }

    fn summary(&self) -> RunSummary {
        RunSummary {
            run_id: self.identity.as_ref().map(|i| i.run_id.clone()),
            thread_id: self.identity.as_ref().map(|i| i.thread_id.clone()),
            owner: self.identity.as_ref().map(|i| i.owner.clone()),
            org_id: self.identity.as_ref().and_then(|i| i.org_id.clone()),
            status: self.status,
            latest_seq: self.latest_seq,
            created_at: self.identity.as_ref().map(|i| i.created_at),
            updated_at: self.updated_at,
            cancel_requested: self.cancel_requested,
        }
    }

    fn upcast(event: cqrs_es::persist::SerializedEvent) -> cqrs_es::persist::SerializedEvent {
        upcast_run_event(event)
    }
}

/// The run `seq` of the event stored at journal `sequence` (`None` for `run.created`).
pub fn run_seq_of(sequence: u64) -> Option<u64> {
    sequence.checked_sub(1).filter(|seq| *seq > 0)
}

/// The journal sequence holding run `seq`.
pub fn journal_sequence_of(seq: u64) -> u64 {
    seq + 1
}

#[cfg(test)]
mod tests;

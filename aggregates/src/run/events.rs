//! Events of a run. Past-tense names; `event_type()` strings and field names are a storage
//! format and never change: a new shape gets a new `event_version` and an upcaster.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{FrameId, Owner, RunId, ThreadId};
use crate::run::RunStatus;
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
        reason_class: String,
        reason: Option<String>,
        error_code: Option<String>,
        finished_at: Timestamp,
    },
}

impl RunEvent {
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

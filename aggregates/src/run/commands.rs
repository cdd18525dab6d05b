//! Commands a run accepts. Imperative names; each variant is one thing a caller asks for.

use serde_json::{Map, Value};

use crate::ids::{FrameId, OrgId, Owner, RunId, ThreadId};
use crate::Timestamp;

/// How a run ended, as requested by `FinishRun`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunCommand {
    /// Create the run for a thread and an owner. Repeating it with the same thread and owner is
    /// a no-op; with another thread or owner it is rejected.
    CreateRun {
        run_id: RunId,
        thread_id: ThreadId,
        owner: Owner,
        /// The tenant, when the caller's token names one. Recorded at creation only.
        org_id: Option<OrgId>,
        metadata: Map<String, Value>,
    },
    /// created → running. A no-op on a running run.
    StartRun { source: String },
    /// Append a frame (input, text delta, tool call/result, usage, any typed frame). The runtime
    /// assigns the next `seq`; if `expected_seq` is given it must be that seq. A frame whose
    /// `frame_id` is already stored is a no-op if its type and payload are equal, else rejected.
    AppendFrame {
        frame_id: FrameId,
        frame_type: String,
        payload: Map<String, Value>,
        occurred_at: Option<Timestamp>,
        expected_seq: Option<u64>,
    },
    /// Ask for cancellation (→ canceling). A no-op once requested or once terminal.
    RequestCancel {
        reason: String,
        requested_by: String,
    },
    /// Record the terminal outcome. Repeating the same outcome is a no-op.
    FinishRun {
        outcome: Outcome,
        reason_class: Option<String>,
        reason: Option<String>,
        error_code: Option<String>,
    },
}

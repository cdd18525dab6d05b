//! The run routes' request, response and query types, with the schemas the document shows.

use aggregates::ids::{FrameId, RunId, ThreadId};
use aggregates::run::RunSummary;
use aggregates::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::api::schema::ApiId;

/// A run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    #[serde(rename = "runId")]
    pub run_id_alias: String,
    pub thread_id: String,
    #[serde(rename = "threadId")]
    pub thread_id_alias: String,
    /// `created`, `running`, `canceling`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// Seq of the run's last event (0 before any).
    pub latest_seq: u64,
    #[serde(rename = "latestSeq")]
    pub latest_seq_alias: u64,
    pub cancel_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at_alias: String,
}

impl RunView {
    pub(super) fn of(summary: &RunSummary) -> Self {
        let run_id = summary
            .run_id
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let thread_id = summary
            .thread_id
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let updated_at = summary.updated_at.to_rfc3339();
        Self {
            run_id_alias: run_id.clone(),
            run_id,
            thread_id_alias: thread_id.clone(),
            thread_id,
            status: summary
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            latest_seq: summary.latest_seq,
            latest_seq_alias: summary.latest_seq,
            cancel_requested: summary.cancel_requested,
            org_id: summary.org_id.as_ref().map(|o| o.to_string()),
            created_at: summary.created_at.map(|t| t.to_rfc3339()),
            updated_at_alias: updated_at.clone(),
            updated_at,
        }
    }
}

/// The outcome of a run command.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunCommandResponse {
    #[serde(flatten)]
    pub run: RunView,
    /// True when the command changed nothing because it had already been applied.
    pub idempotent_replay: bool,
    #[serde(rename = "idempotentReplay")]
    pub idempotent_replay_alias: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// The run's id; generated (`run_…`) when absent. Creating an existing run for the same
    /// thread and principal is an idempotent replay.
    #[schema(value_type = Option<ApiId>)]
    pub run_id: Option<RunId>,
    #[schema(value_type = ApiId)]
    pub thread_id: ThreadId,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrameRequest {
    #[schema(value_type = ApiId)]
    pub thread_id: ThreadId,
    /// Idempotency key of the frame, unique per run.
    #[schema(value_type = ApiId)]
    pub frame_id: FrameId,
    /// `user_message`, `text_delta`, `tool_call`, `tool_result`, `usage` or any typed frame
    /// (letters, digits and `_ - . : /`; not starting with `run.`, the run's own events). The
    /// well-known types need payload fields: `text` (`user_message`), `delta` (`text_delta`),
    /// `tool_call_id` and `name` (`tool_call`), `tool_call_id` (`tool_result`), all strings;
    /// `usage` values are non-negative numbers, strings or null.
    #[serde(rename = "type")]
    // The pattern excludes `run.` without a look-ahead, which not every schema tool supports.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^(?:[A-Za-qs-z0-9_.:/-]|r(?:$|[A-Za-tv-z0-9_.:/-]|u(?:$|[A-Za-mo-z0-9_.:/-]|n(?:$|[A-Za-z0-9_:/-]))))[A-Za-z0-9_.:/-]*$"
    )]
    pub frame_type: String,
    #[schema(value_type = Object)]
    pub payload: Map<String, Value>,
    /// When the producer says the frame happened (RFC 3339).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub occurred_at: Option<Timestamp>,
    /// Optimistic check: the frame must get exactly this seq.
    #[serde(default, deserialize_with = "aggregates::number::opt_whole_u64")]
    pub expected_seq: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FrameResponse {
    pub run_id: String,
    #[serde(rename = "runId")]
    pub run_id_alias: String,
    pub frame_id: String,
    #[serde(rename = "frameId")]
    pub frame_id_alias: String,
    /// Always `accepted`.
    pub status: String,
    /// The seq the frame got (on a re-sent frame, the seq the original got).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub idempotent_replay: bool,
    #[serde(rename = "idempotentReplay")]
    pub idempotent_replay_alias: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[schema(value_type = ApiId)]
    pub thread_id: ThreadId,
    /// At most 1024 bytes (default `cancel_requested`).
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    pub run_id: String,
    #[serde(rename = "runId")]
    pub run_id_alias: String,
    /// `canceling`, or the terminal status if the run had already ended.
    pub status: String,
    pub cancel_requested: bool,
    #[serde(rename = "cancelRequested")]
    pub cancel_requested_alias: bool,
    pub idempotent_replay: bool,
    #[serde(rename = "idempotentReplay")]
    pub idempotent_replay_alias: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[schema(value_type = ApiId)]
    pub thread_id: ThreadId,
    /// Who started it (default `runtime`); at most 1024 bytes.
    #[schema(max_length = 1024)]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishStatus {
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    #[schema(value_type = ApiId)]
    pub thread_id: ThreadId,
    pub status: FinishStatus,
    /// Defaults by status: `completed`, `execution_failed`, `cancel_requested`. Each of these
    /// strings is at most 1024 bytes.
    #[schema(max_length = 1024)]
    pub reason_class: Option<String>,
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
    #[schema(max_length = 1024)]
    pub error_code: Option<String>,
}

// Query values stay strings in Rust (the handlers answer a bad one with a precise
// `invalid_request`); the document states the rules the handlers check.

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreadQuery {
    /// The thread the run belongs to (required).
    #[param(value_type = ApiId, required = true)]
    pub thread_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The thread the run belongs to (required).
    #[param(value_type = ApiId, required = true)]
    pub thread_id: Option<String>,
    /// Resume after this seq (same as `Last-Event-ID`; both must agree when both are sent).
    #[param(value_type = Option<u64>)]
    pub cursor: Option<String>,
    /// How long to keep the stream open waiting for events, in milliseconds (at most the
    /// server's configured maximum, written into the served document).
    #[param(value_type = Option<u64>, minimum = 1)]
    pub tail_ms: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The thread whose runs to list (required).
    #[param(value_type = ApiId, required = true)]
    pub thread_id: Option<String>,
    /// At most this many runs (1–200, default 50), newest first.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub data: Vec<RunView>,
}

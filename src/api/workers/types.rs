//! The worker routes' request, response and query types, with the schemas the document shows.

use aggregates::ids::{RequestId, WorkerId};
use aggregates::worker::{WorkerStatus, WorkerSummary};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::api::schema::ApiId;

/// `{"data": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

/// A worker as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub worker_id: String,
    #[serde(rename = "workerId")]
    pub worker_id_alias: String,
    /// `starting`, `running`, `stopping`, `stopped`, `failed` or `lost`.
    pub status: String,
    pub latest_seq: u64,
    #[serde(rename = "latestSeq")]
    pub latest_seq_alias: u64,
    pub adapter: Option<String>,
    pub workspace_ref: Option<String>,
    pub codex_home_ref: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// `healthy` (lease current), `stale` (lease ran out, not yet marked lost) or `inactive`.
    pub heartbeat_state: String,
    pub lease_expires_at: String,
    pub last_heartbeat_at: Option<String>,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub updated_at: String,
}

impl WorkerView {
    pub(super) fn of(summary: &WorkerSummary, now: aggregates::Timestamp) -> Self {
        let worker_id = summary
            .worker_id
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_default();
        let status = summary.status;
        let heartbeat_state = match status {
            Some(s) if s.is_active() && now < summary.lease_expires_at => "healthy",
            Some(s) if s.is_active() => "stale",
            _ => "inactive",
        };
        Self {
            worker_id_alias: worker_id.clone(),
            worker_id,
            status: status.map(|s| s.as_str()).unwrap_or("unknown").to_owned(),
            latest_seq: summary.latest_seq,
            latest_seq_alias: summary.latest_seq,
            adapter: summary.adapter.clone(),
            workspace_ref: summary.workspace_ref.clone(),
            codex_home_ref: summary.codex_home_ref.clone(),
            metadata: summary.metadata.clone(),
            org_id: summary.org_id.as_ref().map(|o| o.to_string()),
            heartbeat_state: heartbeat_state.into(),
            lease_expires_at: summary.lease_expires_at.to_rfc3339(),
            last_heartbeat_at: summary.last_heartbeat_at.map(|t| t.to_rfc3339()),
            started_at: summary.started_at.map(|t| t.to_rfc3339()),
            stopped_at: summary.stopped_at.map(|t| t.to_rfc3339()),
            updated_at: summary.updated_at.to_rfc3339(),
        }
    }
}

/// The outcome of a worker command.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerCommandResponse {
    #[serde(flatten)]
    pub worker: WorkerView,
    pub idempotent_replay: bool,
    #[serde(rename = "idempotentReplay")]
    pub idempotent_replay_alias: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkerRequest {
    /// Reattach to this worker, or create it; generated (`codexw_…`) when absent.
    #[schema(value_type = Option<ApiId>)]
    pub worker_id: Option<WorkerId>,
    /// At most 1024 bytes (like `codex_home_ref` and `adapter`).
    #[schema(max_length = 1024)]
    pub workspace_ref: Option<String>,
    #[schema(max_length = 1024)]
    pub codex_home_ref: Option<String>,
    /// Default `in_memory`.
    #[schema(max_length = 1024)]
    pub adapter: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Lease length in milliseconds (1000–3600000; default from configuration).
    #[serde(default, deserialize_with = "aggregates::number::opt_whole_u64")]
    #[schema(minimum = 1000, maximum = 3600000)]
    pub lease_ttl_ms: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequestEnvelope {
    pub request: WorkerRequestBody,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequestBody {
    /// Idempotency key of the request per worker; generated when absent.
    #[schema(value_type = Option<ApiId>)]
    pub request_id: Option<RequestId>,
    /// 1 to 128 bytes, not only whitespace.
    #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
    pub method: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerRequestResult {
    pub worker_id: String,
    pub request_id: String,
    pub ok: bool,
    #[schema(value_type = Object)]
    pub response: Value,
    /// Seq of the `worker.request.received` event (on a re-sent request, the original's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub idempotent_replay: bool,
    #[serde(rename = "idempotentReplay")]
    pub idempotent_replay_alias: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Default `stop_requested`; at most 1024 bytes.
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Lease length to extend to, in milliseconds (default: the lease the worker registered
    /// or last reattached with). 1000–3600000.
    #[serde(default, deserialize_with = "aggregates::number::opt_whole_u64")]
    #[schema(minimum = 1000, maximum = 3600000)]
    pub lease_ttl_ms: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportEventRequest {
    pub event: ReportedEvent,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedEvent {
    /// `worker.*`: lifecycle types (`worker.started`, `worker.stopping`, `worker.stopped`,
    /// `worker.failed`, `worker.heartbeat`) move the status; others are stream frames. At most
    /// 128 bytes. `worker.registered`, `worker.reattached`, `worker.lost` and
    /// `worker.request.received` are the runtime's own and are refused.
    #[schema(max_length = 128, pattern = "^worker\\.")]
    pub event_type: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Map<String, Value>,
}

// Query values stay strings in Rust (the handlers answer a bad one with a precise
// `invalid_request`); the document states the rules the handlers check.

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkerStreamQuery {
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
pub struct WorkerListQuery {
    /// Only workers in this status (empty: any).
    #[param(value_type = Option<StatusFilter>)]
    pub status: Option<String>,
    /// Only workers with this workspace.
    pub workspace_ref: Option<String>,
    /// At most this many (1–200, default 50), most recently registered first.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
}

/// The schema of the list's `status` filter: a [`WorkerStatus`] or empty (any), from
/// `WorkerStatus::ALL`.
pub struct StatusFilter;

impl utoipa::PartialSchema for StatusFilter {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let values = std::iter::once("").chain(WorkerStatus::ALL.iter().map(|s| s.as_str()));
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(values))
            .into()
    }
}

impl ToSchema for StatusFilter {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("WorkerStatusFilter")
    }
}

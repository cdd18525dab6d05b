//! The wrapper and views every worker handler answers with (`{"data": …}`, a worker, a
//! command's outcome). Each route's own request and query types live beside its handler.

use aggregates::worker::WorkerSummary;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

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

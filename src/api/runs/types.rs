//! The views every run handler answers with: a run ([`RunView`]) and a command's outcome
//! ([`RunCommandResponse`]). Each route's own request and query types live beside its handler.

use aggregates::run::RunSummary;
use serde::Serialize;
use utoipa::ToSchema;

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

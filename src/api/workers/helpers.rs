//! What every worker handler shares: the limits, the ownership checks (owner, tenant), bounded
//! text and a command's response.

use aggregates::ids::WorkerId;
use aggregates::worker::{Worker, WorkerSummary};
use engine::{Outcome, OutcomeKind};
use serde_json::json;

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::schema::{too_long, MAX_TEXT_CHARS};
use crate::app::App;

use super::types::{Data, WorkerCommandResponse, WorkerView};

/// Most workers one list call returns.
pub(super) const MAX_LIST: usize = 200;

pub(super) fn bounded(text: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    match text {
        Some(t) if too_long(&t) => Err(ApiError::invalid(format!(
            "{field} is longer than {MAX_TEXT_CHARS} characters"
        ))
        .with_details(json!({ "field": field }))),
        other => Ok(other),
    }
}

pub(crate) async fn authorize(
    app: &App,
    caller: &Caller,
    worker_id: &WorkerId,
) -> Result<WorkerSummary, ApiError> {
    let (summary, _) = app.engine().load::<Worker>(worker_id.as_str()).await?;
    check_existing(caller, summary)
}

/// [`authorize`] for a command: what it checks (the worker's owner and tenant) never changes
/// once the worker exists, so this process's cached summary of an existing worker will do and
/// saves a journal read; the command itself then runs against the journal's current state.
pub(super) async fn authorize_command(
    app: &App,
    caller: &Caller,
    worker_id: &WorkerId,
) -> Result<(), ApiError> {
    let summary = app
        .engine()
        .load_settled::<Worker>(worker_id.as_str(), WorkerSummary::exists)
        .await?;
    check_existing(caller, summary).map(drop)
}

fn check_existing(caller: &Caller, summary: WorkerSummary) -> Result<WorkerSummary, ApiError> {
    if !summary.exists() {
        return Err(ApiError::not_found("worker not found")
            .with_details(json!({ "reason": "worker_not_found" })));
    }
    let owned = summary
        .owner
        .as_ref()
        .is_some_and(|owner| caller.principal.owns(owner));
    if !owned {
        return Err(ApiError::forbidden("worker does not belong to principal")
            .with_details(json!({ "reason": "worker_not_owned" })));
    }
    caller.check_org(summary.org_id.as_ref())?;
    Ok(summary)
}

pub(super) fn command_response(
    app: &App,
    outcome: &Outcome<Worker>,
) -> Data<WorkerCommandResponse> {
    let replay = outcome.kind == OutcomeKind::Unchanged;
    Data {
        data: WorkerCommandResponse {
            worker: WorkerView::of(&outcome.summary, app.engine().now()),
            idempotent_replay: replay,
            idempotent_replay_alias: replay,
        },
    }
}

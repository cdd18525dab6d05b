//! What every run handler shares: the limits, the ownership checks (owner, thread, tenant),
//! a required thread id, bounded text and a command's response.

use aggregates::ids::{RunId, ThreadId};
use aggregates::run::{Run, RunSummary};
use engine::{Outcome, OutcomeKind};
use serde_json::json;

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::schema::{too_long, MAX_TEXT_CHARS};
use crate::app::App;

use super::types::{RunCommandResponse, RunView};

/// Most runs one list call returns.
pub(super) const MAX_LIST: usize = 200;

pub(super) fn required_thread(value: Option<String>) -> Result<ThreadId, ApiError> {
    let value = value.ok_or_else(|| {
        ApiError::invalid("thread_id is required").with_details(json!({ "field": "thread_id" }))
    })?;
    ThreadId::parse(value).map_err(|e| ApiError::bad_id(&e))
}

pub(super) fn bounded(
    text: Option<String>,
    field: &str,
    default: &str,
) -> Result<String, ApiError> {
    let text = text.unwrap_or_else(|| default.to_owned());
    if too_long(&text) {
        return Err(ApiError::invalid(format!(
            "{field} is longer than {MAX_TEXT_CHARS} characters"
        ))
        .with_details(json!({ "field": field })));
    }
    Ok(text)
}

/// Loads the run and checks that the caller may act on it for `thread_id`.
pub(crate) async fn authorize(
    app: &App,
    caller: &Caller,
    run_id: &RunId,
    thread_id: &ThreadId,
) -> Result<RunSummary, ApiError> {
    caller.check_thread(thread_id)?;
    let (summary, _) = app.engine().load::<Run>(run_id.as_str()).await?;
    check_existing(caller, summary, thread_id)
}

/// [`authorize`] for a command: what it checks (the run's owner, thread and tenant) never
/// changes once the run exists, so this process's cached summary of an existing run will do and
/// saves a journal read; the command itself then runs against the journal's current state.
pub(super) async fn authorize_command(
    app: &App,
    caller: &Caller,
    run_id: &RunId,
    thread_id: &ThreadId,
) -> Result<(), ApiError> {
    caller.check_thread(thread_id)?;
    let summary = app
        .engine()
        .load_settled::<Run>(run_id.as_str(), RunSummary::exists)
        .await?;
    check_existing(caller, summary, thread_id).map(drop)
}

fn check_existing(
    caller: &Caller,
    summary: RunSummary,
    thread_id: &ThreadId,
) -> Result<RunSummary, ApiError> {
    if !summary.exists() {
        return Err(ApiError::not_found("run not found").with_details(json!({
            "reason": "run_not_found"
        })));
    }
    check_owner(caller, &summary, thread_id)?;
    Ok(summary)
}

pub(super) fn check_owner(
    caller: &Caller,
    summary: &RunSummary,
    thread_id: &ThreadId,
) -> Result<(), ApiError> {
    let owned = summary
        .owner
        .as_ref()
        .is_some_and(|owner| caller.principal.owns(owner));
    if !owned || summary.thread_id.as_ref() != Some(thread_id) {
        return Err(
            ApiError::forbidden("run/thread does not belong to principal")
                .with_details(json!({ "reason": "not_owner" })),
        );
    }
    caller.check_org(summary.org_id.as_ref())
}

pub(super) fn command_response(outcome: &Outcome<Run>) -> RunCommandResponse {
    let replay = outcome.kind == OutcomeKind::Unchanged;
    RunCommandResponse {
        run: RunView::of(&outcome.summary),
        idempotent_replay: replay,
        idempotent_replay_alias: replay,
    }
}

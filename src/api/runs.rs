//! `/internal/v1/runs`: the original contract's frames, cancel, snapshot and stream routes, plus
//! the additive create, start, finish and list routes.
//!
//! Ownership is checked against the run's own `run.created` record (owner, thread, tenant); a
//! `user_id` in a body is never trusted. Responses carry both the snake_case fields and the
//! original camelCase aliases (`runId`, `idempotentReplay`, …).

use aggregates::ids::{FrameId, RunId, ThreadId};
use aggregates::run::{
    journal_sequence_of, run_seq_of, Outcome as RunOutcome, Run, RunCommand, RunStatus, RunSummary,
};
use aggregates::Timestamp;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::Response;
use axum::Json;
use engine::{Outcome, OutcomeKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::Caller;
use crate::api::command::{command, Command, CommandRoute};
use crate::api::error::{ApiError, ErrorEnvelope};
use crate::api::extract::{check_metadata, ApiJson, ApiQuery, IdempotencyKey, PathId};
use crate::api::openapi::ApiId;
use crate::api::stream::{resolve_start, sse, Batch, PAGE_EVENTS};
use crate::app::App;

/// Longest accepted `reason`/`source` strings.
const MAX_TEXT: usize = 1024;
/// Most runs one list call returns.
const MAX_LIST: usize = 200;

/// The run routes, each mounted at the path of its handler's `#[utoipa::path]` (which also puts
/// it in the OpenAPI document).
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(create_run, list_runs))
        .routes(routes!(snapshot))
        .routes(routes!(append_frame))
        .routes(routes!(cancel))
        .routes(routes!(start))
        .routes(routes!(finish))
        .routes(routes!(stream))
}

// ---------------------------------------------------------------------------------------------
// Wire types

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
    fn of(summary: &RunSummary) -> Self {
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

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn required_thread(value: Option<String>) -> Result<ThreadId, ApiError> {
    let value = value.ok_or_else(|| {
        ApiError::invalid("thread_id is required").with_details(json!({ "field": "thread_id" }))
    })?;
    ThreadId::parse(value).map_err(|e| ApiError::bad_id(&e))
}

fn bounded(text: Option<String>, field: &str, default: &str) -> Result<String, ApiError> {
    let text = text.unwrap_or_else(|| default.to_owned());
    if text.len() > MAX_TEXT {
        return Err(
            ApiError::invalid(format!("{field} is longer than {MAX_TEXT} bytes"))
                .with_details(json!({ "field": field })),
        );
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
async fn authorize_command(
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

fn check_owner(
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

fn command_response(outcome: &Outcome<Run>) -> RunCommandResponse {
    let replay = outcome.kind == OutcomeKind::Unchanged;
    RunCommandResponse {
        run: RunView::of(&outcome.summary),
        idempotent_replay: replay,
        idempotent_replay_alias: replay,
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// Create a run (additive).
#[utoipa::path(post, path = "/internal/v1/runs", tag = "runs",
    request_body = CreateRunRequest,
    params(IdempotencyKey),
    responses(
        (status = 201, description = "Created", body = RunCommandResponse),
        (status = 200, description = "Already existed for this thread and principal", body = RunCommandResponse),
        (status = 409, description = "The run exists for another thread or owner", body = ErrorEnvelope),
    ))]
pub(crate) async fn create_run(
    State(app): State<App>,
    caller: Caller,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<CreateRunRequest>,
) -> Result<Response, ApiError> {
    caller.check_thread(&body.thread_id)?;
    check_metadata(&body.metadata, app.config().http.metadata_limit_bytes)?;
    // The body's id, else the id the token is bound to, else a fresh one.
    let run_id = match (body.run_id, &caller.claims.run_id) {
        (Some(id), _) => id,
        (None, Some(claimed)) => RunId::parse(claimed.clone()).map_err(|e| ApiError::bad_id(&e))?,
        (None, None) => {
            RunId::parse(app.engine().next_id("run_")).map_err(|e| ApiError::bad_id(&e))?
        }
    };
    if let Some(claimed) = &caller.claims.run_id {
        if claimed != run_id.as_str() {
            return Err(engine::auth::AuthError::Forbidden { claim: "run_id" }.into());
        }
    }
    let action = RunCommand::CreateRun {
        run_id: run_id.clone(),
        thread_id: body.thread_id,
        owner: caller.principal.owner(),
        org_id: caller.org.clone(),
        metadata: body.metadata,
    };
    let cmd = Command {
        app: &app,
        caller: &caller,
        key,
        route,
        body: &raw,
    };
    command(
        cmd,
        run_id.as_str(),
        action,
        StatusCode::CREATED,
        command_response,
    )
    .await
}

/// Runs of one thread owned by the caller, newest first (additive).
#[utoipa::path(get, path = "/internal/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, body = RunList)))]
pub(crate) async fn list_runs(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let thread_id = required_thread(query.thread_id)?;
    caller.check_thread(&thread_id)?;
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit must be an integer between 1 and {MAX_LIST}"
                ))
                .with_details(json!({ "field": "limit" })))
            }
        },
    };
    let ids =
        engine::listing::runs_of_thread(app.database(), thread_id.as_str(), 4 * MAX_LIST).await?;
    let mut data = Vec::new();
    for id in ids {
        let (summary, _) = app.engine().load::<Run>(&id).await?;
        let visible = caller.may_see(summary.owner.as_ref(), summary.org_id.as_ref())
            && caller
                .claims
                .run_id
                .as_deref()
                .is_none_or(|claimed| claimed == id);
        if visible {
            data.push(RunView::of(&summary));
            if data.len() == limit {
                break;
            }
        }
    }
    Ok(Json(RunList { data }))
}

/// The run's status and latest seq (original contract).
#[utoipa::path(get, path = "/internal/v1/runs/{run_id}/snapshot", operation_id = "run_snapshot", tag = "runs",
    params(("run_id" = ApiId, Path), ThreadQuery),
    responses((status = 200, body = RunView), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub(crate) async fn snapshot(
    State(app): State<App>,
    caller: Caller,
    PathId(run_id): PathId<RunId>,
    ApiQuery(query): ApiQuery<ThreadQuery>,
) -> Result<Json<RunView>, ApiError> {
    let thread_id = required_thread(query.thread_id)?;
    let summary = authorize(&app, &caller, &run_id, &thread_id).await?;
    Ok(Json(RunView::of(&summary)))
}

/// Append a frame (original contract). A frame for a run the runtime has not seen creates the
/// run for the caller and thread first.
#[utoipa::path(post, path = "/internal/v1/runs/{run_id}/frames", tag = "runs",
    params(("run_id" = ApiId, Path), IdempotencyKey),
    request_body = FrameRequest,
    responses(
        (status = 202, description = "Accepted", body = FrameResponse),
        (status = 200, description = "Same frame_id and content: idempotent replay", body = FrameResponse),
        (status = 409, description = "Same frame_id, different content; or the run is terminal", body = ErrorEnvelope),
    ))]
#[tracing::instrument(name = "runtime.ingest", skip_all, fields(run_id = %run_id))]
pub(crate) async fn append_frame(
    State(app): State<App>,
    caller: Caller,
    PathId(run_id): PathId<RunId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<FrameRequest>,
) -> Result<Response, ApiError> {
    caller.check_thread(&body.thread_id)?;
    // Checked before a run is implicitly created, so an invalid frame writes nothing at all.
    aggregates::run::validate_frame(&body.frame_type, &body.payload)
        .map_err(|e| ApiError::from(engine::CommandError::Rejected(e)))?;
    let summary = app
        .engine()
        .load_settled::<Run>(run_id.as_str(), RunSummary::exists)
        .await?;
    if summary.exists() {
        check_owner(&caller, &summary, &body.thread_id)?;
    } else {
        let create = RunCommand::CreateRun {
            run_id: run_id.clone(),
            thread_id: body.thread_id.clone(),
            owner: caller.principal.owner(),
            org_id: caller.org.clone(),
            metadata: Map::new(),
        };
        // A concurrent creator for another owner or thread makes this `409 run_exists`.
        app.engine()
            .execute::<Run>(run_id.as_str(), create, &caller.context(None))
            .await?;
    }
    let frame_id = body.frame_id.clone();
    let action = RunCommand::AppendFrame {
        frame_id: body.frame_id,
        frame_type: body.frame_type,
        payload: body.payload,
        occurred_at: body.occurred_at,
        expected_seq: body.expected_seq,
    };
    let cmd = Command {
        app: &app,
        caller: &caller,
        key,
        route,
        body: &raw,
    };
    command(
        cmd,
        run_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        |outcome: &Outcome<Run>| {
            let replay = outcome.kind == OutcomeKind::Unchanged;
            // A re-sent frame answers with the seq the original got, like the first answer did.
            let seq = outcome
                .events
                .first()
                .map(|e| e.sequence as u64)
                .or(outcome.recorded_sequence)
                .and_then(run_seq_of);
            FrameResponse {
                run_id: run_id.to_string(),
                run_id_alias: run_id.to_string(),
                frame_id: frame_id.to_string(),
                frame_id_alias: frame_id.to_string(),
                status: "accepted".into(),
                seq,
                idempotent_replay: replay,
                idempotent_replay_alias: replay,
            }
        },
    )
    .await
}

/// Request cancellation (original contract): a durable `run.cancel_requested`.
#[utoipa::path(post, path = "/internal/v1/runs/{run_id}/cancel", operation_id = "cancel_run", tag = "runs",
    params(("run_id" = ApiId, Path), IdempotencyKey),
    request_body = CancelRequest,
    responses(
        (status = 202, description = "Cancellation requested", body = CancelResponse),
        (status = 200, description = "Already requested (or the run already ended)", body = CancelResponse),
    ))]
#[tracing::instrument(name = "runtime.ingest", skip_all, fields(run_id = %run_id, action = "cancel"))]
pub(crate) async fn cancel(
    State(app): State<App>,
    caller: Caller,
    PathId(run_id): PathId<RunId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<CancelRequest>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &run_id, &body.thread_id).await?;
    let action = RunCommand::RequestCancel {
        reason: bounded(body.reason, "reason", "cancel_requested")?,
        requested_by: caller.principal.reference(),
    };
    let cmd = Command {
        app: &app,
        caller: &caller,
        key,
        route,
        body: &raw,
    };
    command(
        cmd,
        run_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        |outcome: &Outcome<Run>| {
            let replay = outcome.kind == OutcomeKind::Unchanged;
            let summary = &outcome.summary;
            CancelResponse {
                run_id: run_id.to_string(),
                run_id_alias: run_id.to_string(),
                status: summary
                    .status
                    .unwrap_or(RunStatus::Canceling)
                    .as_str()
                    .to_owned(),
                cancel_requested: summary.cancel_requested,
                cancel_requested_alias: summary.cancel_requested,
                idempotent_replay: replay,
                idempotent_replay_alias: replay,
            }
        },
    )
    .await
}

/// created → running (additive).
#[utoipa::path(post, path = "/internal/v1/runs/{run_id}/start", operation_id = "start_run", tag = "runs",
    params(("run_id" = ApiId, Path), IdempotencyKey), request_body = StartRequest,
    responses((status = 202, body = RunCommandResponse), (status = 200, body = RunCommandResponse), (status = 409, body = ErrorEnvelope)))]
pub(crate) async fn start(
    State(app): State<App>,
    caller: Caller,
    PathId(run_id): PathId<RunId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<StartRequest>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &run_id, &body.thread_id).await?;
    let action = RunCommand::StartRun {
        source: bounded(body.source, "source", "runtime")?,
    };
    let cmd = Command {
        app: &app,
        caller: &caller,
        key,
        route,
        body: &raw,
    };
    command(
        cmd,
        run_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        command_response,
    )
    .await
}

/// Record the terminal outcome (additive).
#[utoipa::path(post, path = "/internal/v1/runs/{run_id}/finish", operation_id = "finish_run", tag = "runs",
    params(("run_id" = ApiId, Path), IdempotencyKey), request_body = FinishRequest,
    responses((status = 202, body = RunCommandResponse), (status = 200, body = RunCommandResponse), (status = 409, body = ErrorEnvelope)))]
pub(crate) async fn finish(
    State(app): State<App>,
    caller: Caller,
    PathId(run_id): PathId<RunId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<FinishRequest>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &run_id, &body.thread_id).await?;
    let check = |value: Option<String>, field: &str| -> Result<Option<String>, ApiError> {
        value.map(|v| bounded(Some(v), field, "")).transpose()
    };
    let action = RunCommand::FinishRun {
        outcome: match body.status {
            FinishStatus::Succeeded => RunOutcome::Succeeded,
            FinishStatus::Failed => RunOutcome::Failed,
            FinishStatus::Canceled => RunOutcome::Canceled,
        },
        reason_class: check(body.reason_class, "reason_class")?,
        reason: check(body.reason, "reason")?,
        error_code: check(body.error_code, "error_code")?,
    };
    let cmd = Command {
        app: &app,
        caller: &caller,
        key,
        route,
        body: &raw,
    };
    command(
        cmd,
        run_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        command_response,
    )
    .await
}

/// The run's events as Server-Sent Events (original contract). `id:` is the seq; a terminal run
/// ends with `data: [DONE]`.
#[utoipa::path(get, path = "/internal/v1/runs/{run_id}/stream", operation_id = "run_stream", tag = "runs",
    params(("run_id" = ApiId, Path), StreamQuery,
        crate::api::stream::LastEventId),
    responses(
        (status = 200, description = "text/event-stream: `event: run.event`, `id: <seq>`, `data: {runId, seq, type, payload}`; `data: [DONE]` after a terminal event", content_type = "text/event-stream", body = crate::api::stream::SseEvent),
        (status = 400, body = ErrorEnvelope), (status = 410, description = "Cursor below the retention floor", body = ErrorEnvelope),
    ))]
pub(crate) async fn stream(
    State(app): State<App>,
    caller: Caller,
    PathId(run_id): PathId<RunId>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let thread_id = required_thread(query.thread_id)?;
    let summary = authorize(&app, &caller, &run_id, &thread_id).await?;
    let start = resolve_start(
        query.cursor.as_deref(),
        &headers,
        query.tail_ms.as_deref(),
        summary.latest_seq,
        &app.config().http,
    )?;
    let engine = app.engine().clone();
    let id = run_id.to_string();
    let fetch = move |after: u64| {
        let engine = engine.clone();
        let id = id.clone();
        async move {
            let (summary, _) = engine.load::<Run>(&id).await?;
            let envelopes = engine
                .events_page::<Run>(&id, journal_sequence_of(after), PAGE_EVENTS)
                .await?;
            let more = (envelopes.len() == PAGE_EVENTS)
                .then(|| envelopes.last().and_then(|e| run_seq_of(e.sequence as u64)))
                .map(|last| last.unwrap_or(after));
            let mut events = Vec::with_capacity(envelopes.len());
            for envelope in envelopes {
                let Some(seq) = run_seq_of(envelope.sequence as u64) else {
                    continue;
                };
                let Some(view) = envelope.payload.runtime_view() else {
                    continue;
                };
                let data = json!({
                    "runId": id, "run_id": id, "seq": seq,
                    "type": view.event_type, "payload": view.payload,
                    "recorded_at": envelope.metadata.get("recorded_at"),
                });
                events.push((
                    seq,
                    Event::default()
                        .event("run.event")
                        .id(seq.to_string())
                        .data(data.to_string()),
                ));
            }
            let done = more.is_none() && summary.status.is_some_and(|s| s.is_terminal());
            Ok::<_, ApiError>(Batch { events, more, done })
        }
    };
    Ok(sse(&app, "run", run_id.to_string(), start, fetch))
}

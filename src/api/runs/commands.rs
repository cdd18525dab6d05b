//! The run routes that append: create, frames, cancel, start and finish — each handler with its
//! request and response types, and [`router`], where they are mounted.

use aggregates::ids::RunId;
use aggregates::run::{run_seq_of, Outcome as RunOutcome, Run, RunCommand, RunStatus, RunSummary};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use engine::{Outcome, OutcomeKind};
use serde_json::Map;

use crate::api::auth::Caller;
use crate::api::command::{command, Command, CommandRoute};
use crate::api::error::{ApiError, ErrorEnvelope};
use crate::api::extract::{check_metadata, ApiJson, IdempotencyKey, PathId};
use crate::api::schema::ApiId;
use crate::app::App;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::helpers::{authorize_command, bounded, check_owner, command_response};
use super::types::RunCommandResponse;
use aggregates::ids::{FrameId, ThreadId};
use aggregates::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

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
    /// At most 1024 characters (default `cancel_requested`).
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
    /// Who started it (default `runtime`); at most 1024 characters.
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
    /// strings is at most 1024 characters.
    #[schema(max_length = 1024)]
    pub reason_class: Option<String>,
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
    #[schema(max_length = 1024)]
    pub error_code: Option<String>,
}

// Query values stay strings in Rust (the handlers answer a bad one with a precise
// `invalid_request`); the document states the rules the handlers check.

/// The command routes (and the thread's list, which shares `POST /internal/v1/runs`'s path).
pub(super) fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(create_run, super::reads::list_runs))
        .routes(routes!(append_frame))
        .routes(routes!(cancel))
        .routes(routes!(start))
        .routes(routes!(finish))
}

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

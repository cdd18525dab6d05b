//! The worker routes that append: create or reattach, requests, stop, heartbeat and reported
//! events — each handler with its request and response types, and [`router`], where they are
//! mounted.

use aggregates::ids::{RequestId, WorkerId};
use aggregates::worker::{Worker, WorkerCommand};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use engine::{Outcome, OutcomeKind};
use serde_json::{json, Map, Value};

use crate::api::auth::Caller;
use crate::api::command::{command, Command, CommandRoute};
use crate::api::error::{ApiError, ErrorEnvelope};
use crate::api::extract::{check_metadata, ApiJson, IdempotencyKey, PathId};
use crate::api::schema::ApiId;
use crate::app::App;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::helpers::{authorize_command, bounded, command_response};
use super::types::{Data, WorkerCommandResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkerRequest {
    /// Reattach to this worker, or create it; generated (`codexw_…`) when absent.
    #[schema(value_type = Option<ApiId>)]
    pub worker_id: Option<WorkerId>,
    /// At most 1024 characters (like `codex_home_ref` and `adapter`).
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
    /// Default `stop_requested`; at most 1024 characters.
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

/// The command routes (and the list, which shares the create route's path).
pub(super) fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(create, super::reads::list))
        .routes(routes!(request))
        .routes(routes!(stop))
        .routes(routes!(heartbeat))
        .routes(routes!(report_event))
}

/// Create a worker, or reattach to one (original contract).
#[utoipa::path(post, path = "/internal/v1/codex/workers", operation_id = "create_worker", tag = "workers",
    params(IdempotencyKey),
    request_body(content = Option<CreateWorkerRequest>, description = "Optional: an empty body is `{}`"),
    responses(
        (status = 202, description = "Registered, or reattached after stop/failure/loss", body = Data<WorkerCommandResponse>),
        (status = 200, description = "Already active: idempotent replay", body = Data<WorkerCommandResponse>),
        (status = 403, description = "Owned by another principal", body = ErrorEnvelope),
    ))]
pub(crate) async fn create(
    State(app): State<App>,
    caller: Caller,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<CreateWorkerRequest>,
) -> Result<Response, ApiError> {
    check_metadata(&body.metadata, app.config().http.metadata_limit_bytes)?;
    let worker_id = match body.worker_id {
        Some(id) => {
            let (summary, _) = app.engine().load::<Worker>(id.as_str()).await?;
            if summary.exists() {
                caller.check_org(summary.org_id.as_ref())?;
            }
            id
        }
        None => {
            WorkerId::parse(app.engine().next_id("codexw_")).map_err(|e| ApiError::bad_id(&e))?
        }
    };
    let action = WorkerCommand::RegisterWorker {
        worker_id: worker_id.clone(),
        owner: caller.principal.owner(),
        org_id: caller.org.clone(),
        adapter: bounded(body.adapter, "adapter")?.unwrap_or_else(|| "in_memory".into()),
        workspace_ref: bounded(body.workspace_ref, "workspace_ref")?,
        codex_home_ref: bounded(body.codex_home_ref, "codex_home_ref")?,
        metadata: body.metadata,
        lease_ttl_ms: body
            .lease_ttl_ms
            .unwrap_or(app.config().workers.default_lease_ttl_ms),
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
        worker_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        |outcome: &Outcome<Worker>| command_response(&app, outcome),
    )
    .await
}

/// Submit a JSON-RPC-style request to the worker (original contract); idempotent by
/// `request_id`, recorded as `worker.request.received`.
#[utoipa::path(post, path = "/internal/v1/codex/workers/{worker_id}/requests", operation_id = "worker_request", tag = "workers",
    params(("worker_id" = ApiId, Path), IdempotencyKey), request_body = WorkerRequestEnvelope,
    responses((status = 200, body = Data<WorkerRequestResult>), (status = 409, body = ErrorEnvelope)))]
pub(crate) async fn request(
    State(app): State<App>,
    caller: Caller,
    PathId(worker_id): PathId<WorkerId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<WorkerRequestEnvelope>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &worker_id).await?;
    let request = body.request;
    let request_id = match request.request_id {
        Some(id) => id,
        None => RequestId::parse(app.engine().next_id("req_")).map_err(|e| ApiError::bad_id(&e))?,
    };
    let method = request.method.clone();
    let params = if request.params.is_null() {
        Value::Object(Map::new())
    } else {
        request.params
    };
    let action = WorkerCommand::RecordRequest {
        request_id: request_id.clone(),
        method: request.method,
        params,
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
        worker_id.as_str(),
        action,
        StatusCode::OK,
        |outcome: &Outcome<Worker>| {
            let replay = outcome.kind == OutcomeKind::Unchanged;
            Data {
                data: WorkerRequestResult {
                    worker_id: worker_id.to_string(),
                    request_id: request_id.to_string(),
                    ok: true,
                    response: json!({ "status": "accepted", "method": method }),
                    // A re-sent request answers with the seq the original got.
                    seq: outcome
                        .events
                        .first()
                        .map(|e| e.sequence as u64)
                        .or(outcome.recorded_sequence),
                    idempotent_replay: replay,
                    idempotent_replay_alias: replay,
                },
            }
        },
    )
    .await
}

/// Ask the worker to stop (original contract): a durable `worker.stopped`.
#[utoipa::path(post, path = "/internal/v1/codex/workers/{worker_id}/stop", operation_id = "stop_worker", tag = "workers",
    params(("worker_id" = ApiId, Path), IdempotencyKey), request_body(content = Option<StopRequest>, description = "Optional: an empty body is `{}`"),
    responses((status = 202, body = Data<WorkerCommandResponse>), (status = 200, description = "Already stopped", body = Data<WorkerCommandResponse>)))]
pub(crate) async fn stop(
    State(app): State<App>,
    caller: Caller,
    PathId(worker_id): PathId<WorkerId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<StopRequest>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &worker_id).await?;
    let action = WorkerCommand::RequestStop {
        reason: bounded(body.reason, "reason")?.unwrap_or_else(|| "stop_requested".into()),
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
        worker_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        |outcome: &Outcome<Worker>| command_response(&app, outcome),
    )
    .await
}

/// The worker is alive (additive): starting → running, and the lease is extended. Renewals are
/// journaled only once less than half the lease remains (`200` with `idempotentReplay` before).
#[utoipa::path(post, path = "/internal/v1/codex/workers/{worker_id}/heartbeat", operation_id = "worker_heartbeat", tag = "workers",
    params(("worker_id" = ApiId, Path), IdempotencyKey), request_body(content = Option<HeartbeatRequest>, description = "Optional: an empty body is `{}`"),
    responses((status = 202, body = Data<WorkerCommandResponse>), (status = 200, body = Data<WorkerCommandResponse>), (status = 409, body = ErrorEnvelope)))]
pub(crate) async fn heartbeat(
    State(app): State<App>,
    caller: Caller,
    PathId(worker_id): PathId<WorkerId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &worker_id).await?;
    // Without `lease_ttl_ms` the worker keeps the lease it registered with (not the server
    // default, which would stretch or shrink a lease the worker chose).
    let action = WorkerCommand::Heartbeat {
        lease_ttl_ms: body.lease_ttl_ms,
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
        worker_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        |outcome: &Outcome<Worker>| command_response(&app, outcome),
    )
    .await
}

/// An event the worker reports (additive).
#[utoipa::path(post, path = "/internal/v1/codex/workers/{worker_id}/events", operation_id = "report_worker_event", tag = "workers",
    params(("worker_id" = ApiId, Path), IdempotencyKey), request_body = ReportEventRequest,
    responses((status = 202, body = Data<WorkerCommandResponse>), (status = 200, body = Data<WorkerCommandResponse>), (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub(crate) async fn report_event(
    State(app): State<App>,
    caller: Caller,
    PathId(worker_id): PathId<WorkerId>,
    key: IdempotencyKey,
    route: CommandRoute,
    ApiJson { value: body, raw }: ApiJson<ReportEventRequest>,
) -> Result<Response, ApiError> {
    authorize_command(&app, &caller, &worker_id).await?;
    let action = WorkerCommand::ReportEvent {
        event_type: body.event.event_type,
        payload: body.event.payload,
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
        worker_id.as_str(),
        action,
        StatusCode::ACCEPTED,
        |outcome: &Outcome<Worker>| command_response(&app, outcome),
    )
    .await
}

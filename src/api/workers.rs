//! `/internal/v1/codex/workers`: the original contract's create/reattach, snapshot, requests,
//! stream and stop routes, plus the additive list, heartbeat and reported-events routes.
//! Responses are wrapped in `{"data": …}` as the original's were.

use aggregates::ids::{RequestId, WorkerId};
use aggregates::worker::{Worker, WorkerCommand, WorkerStatus, WorkerSummary};
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

/// Longest accepted free-text field (`adapter`, refs, `reason`).
const MAX_TEXT: usize = 1024;
/// Most workers one list call returns.
const MAX_LIST: usize = 200;

/// The worker routes, each mounted at the path of its handler's `#[utoipa::path]` (which also
/// puts it in the OpenAPI document).
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(snapshot))
        .routes(routes!(request))
        .routes(routes!(stream))
        .routes(routes!(stop))
        .routes(routes!(heartbeat))
        .routes(routes!(report_event))
}

// ---------------------------------------------------------------------------------------------
// Wire types

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
    fn of(summary: &WorkerSummary, now: aggregates::Timestamp) -> Self {
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

// ---------------------------------------------------------------------------------------------
// Helpers

fn bounded(text: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    match text {
        Some(t) if t.len() > MAX_TEXT => Err(ApiError::invalid(format!(
            "{field} is longer than {MAX_TEXT} bytes"
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
async fn authorize_command(
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

fn command_response(app: &App, outcome: &Outcome<Worker>) -> Data<WorkerCommandResponse> {
    let replay = outcome.kind == OutcomeKind::Unchanged;
    Data {
        data: WorkerCommandResponse {
            worker: WorkerView::of(&outcome.summary, app.engine().now()),
            idempotent_replay: replay,
            idempotent_replay_alias: replay,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

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

/// The caller's workers (original contract's list).
#[utoipa::path(get, path = "/internal/v1/codex/workers", operation_id = "list_workers", tag = "workers", params(WorkerListQuery),
    responses((status = 200, body = Data<Vec<WorkerView>>)))]
pub(crate) async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(query): ApiQuery<WorkerListQuery>,
) -> Result<Json<Data<Vec<WorkerView>>>, ApiError> {
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
    let status = match query
        .status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(raw) => Some(WorkerStatus::parse(raw).ok_or_else(|| {
            let all: Vec<_> = WorkerStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(format!("status must be one of: {}", all.join(", ")))
                .with_details(json!({ "field": "status" }))
        })?),
    };
    let mut ids = Vec::new();
    if let Some(user) = caller.principal.user() {
        ids.extend(
            engine::listing::workers_of_owner(app.database(), "user", user.as_str(), 4 * MAX_LIST)
                .await?,
        );
    }
    if let Some(guest) = caller.principal.guest() {
        ids.extend(
            engine::listing::workers_of_owner(
                app.database(),
                "guest",
                guest.as_str(),
                4 * MAX_LIST,
            )
            .await?,
        );
    }
    let now = app.engine().now();
    let mut data = Vec::new();
    for id in ids {
        let (summary, _) = app.engine().load::<Worker>(&id).await?;
        let keep = status.is_none_or(|s| summary.status == Some(s))
            && query
                .workspace_ref
                .as_deref()
                .is_none_or(|w| summary.workspace_ref.as_deref() == Some(w))
            && caller.check_org(summary.org_id.as_ref()).is_ok();
        if keep {
            data.push(WorkerView::of(&summary, now));
            if data.len() == limit {
                break;
            }
        }
    }
    Ok(Json(Data { data }))
}

/// Durable worker status and latest seq (original contract).
#[utoipa::path(get, path = "/internal/v1/codex/workers/{worker_id}/snapshot", operation_id = "worker_snapshot", tag = "workers",
    params(("worker_id" = ApiId, Path)),
    responses((status = 200, body = Data<WorkerView>), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub(crate) async fn snapshot(
    State(app): State<App>,
    caller: Caller,
    PathId(worker_id): PathId<WorkerId>,
) -> Result<Json<Data<WorkerView>>, ApiError> {
    let summary = authorize(&app, &caller, &worker_id).await?;
    Ok(Json(Data {
        data: WorkerView::of(&summary, app.engine().now()),
    }))
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

/// The worker's events as Server-Sent Events (original contract): `event: codex.worker.event`,
/// `id:` = seq.
#[utoipa::path(get, path = "/internal/v1/codex/workers/{worker_id}/stream", operation_id = "worker_stream", tag = "workers",
    params(("worker_id" = ApiId, Path), WorkerStreamQuery,
        crate::api::stream::LastEventId),
    responses(
        (status = 200, description = "text/event-stream: `event: codex.worker.event`, `id: <seq>`, `data: {workerId, seq, eventType, payload, occurredAt}`", content_type = "text/event-stream", body = crate::api::stream::SseEvent),
        (status = 400, body = ErrorEnvelope), (status = 410, body = ErrorEnvelope),
    ))]
pub(crate) async fn stream(
    State(app): State<App>,
    caller: Caller,
    PathId(worker_id): PathId<WorkerId>,
    ApiQuery(query): ApiQuery<WorkerStreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let summary = authorize(&app, &caller, &worker_id).await?;
    let start = resolve_start(
        query.cursor.as_deref(),
        &headers,
        query.tail_ms.as_deref(),
        summary.latest_seq,
        &app.config().http,
    )?;
    let engine = app.engine().clone();
    let id = worker_id.to_string();
    let fetch = move |after: u64| {
        let engine = engine.clone();
        let id = id.clone();
        async move {
            let envelopes = engine
                .events_page::<Worker>(&id, after, PAGE_EVENTS)
                .await?;
            let more = (envelopes.len() == PAGE_EVENTS)
                .then(|| envelopes.last().map_or(after, |e| e.sequence as u64));
            let events = envelopes
                .into_iter()
                .map(|envelope| {
                    let seq = envelope.sequence as u64;
                    let event_type = envelope.payload.stream_event_type();
                    let occurred_at = envelope.payload.at().to_rfc3339();
                    let data = json!({
                        "workerId": id, "worker_id": id, "seq": seq,
                        "eventType": event_type, "event_type": event_type,
                        "payload": envelope.payload.stream_payload(),
                        "occurredAt": occurred_at, "occurred_at": occurred_at,
                    });
                    (
                        seq,
                        Event::default()
                            .id(seq.to_string())
                            .event("codex.worker.event")
                            .data(data.to_string()),
                    )
                })
                .collect();
            Ok::<_, ApiError>(Batch {
                events,
                more,
                done: false,
            })
        }
    };
    Ok(sse(
        &app,
        "codex_worker",
        worker_id.to_string(),
        start,
        fetch,
    ))
}

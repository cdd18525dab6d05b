//! The worker routes that read: the caller's list, a worker's snapshot and its event stream —
//! each handler with its query types, and [`router`], where they are mounted (the list shares
//! its path with worker creation and is mounted there).

use aggregates::ids::WorkerId;
use aggregates::worker::{Worker, WorkerStatus};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::Response;
use axum::Json;
use serde_json::json;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorEnvelope};
use crate::api::extract::{ApiQuery, PathId};
use crate::api::schema::ApiId;
use crate::api::stream::{resolve_start, sse, Batch, PAGE_EVENTS};
use crate::app::App;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::helpers::{authorize, MAX_LIST};
use super::types::{Data, WorkerView};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

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

/// The read routes (the list is mounted with worker creation, on the same path).
pub(super) fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(snapshot))
        .routes(routes!(stream))
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

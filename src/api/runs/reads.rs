//! The run routes that read: the thread's list, a run's snapshot and its event stream — each
//! handler with its query and response types, and [`router`], where they are mounted (the list
//! shares its path with run creation and is mounted there).

use aggregates::ids::RunId;
use aggregates::run::{journal_sequence_of, run_seq_of, Run};
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

use super::helpers::{authorize, required_thread, MAX_LIST};
use super::types::RunView;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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

/// The read routes (the list is mounted with run creation, on the same path).
pub(super) fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(snapshot))
        .routes(routes!(stream))
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

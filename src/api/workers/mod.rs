//! `/internal/v1/codex/workers`: the original contract's create/reattach, snapshot, requests,
//! stream and stop routes, plus the additive list, heartbeat and reported-events routes.
//! Responses are wrapped in `{"data": …}` as the original's were.
//!
//! # Layout
//! - this file: the routes;
//! - `helpers.rs`: the checks every handler shares (ownership, bounded text);
//! - `types.rs`: the request, response and query types (their schemas are in the document);
//! - `commands.rs`: the handlers that append (create, requests, stop, heartbeat, events);
//! - `reads.rs`: the handlers that read (list, snapshot, stream).

mod commands;
mod helpers;
mod reads;
mod types;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

pub use types::{
    CreateWorkerRequest, Data, HeartbeatRequest, ReportEventRequest, ReportedEvent, StatusFilter,
    StopRequest, WorkerCommandResponse, WorkerListQuery, WorkerRequestBody, WorkerRequestEnvelope,
    WorkerRequestResult, WorkerStreamQuery, WorkerView,
};

/// The worker routes, each mounted at the path of its handler's `#[utoipa::path]` (which also
/// puts it in the OpenAPI document).
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(commands::create, reads::list))
        .routes(routes!(reads::snapshot))
        .routes(routes!(commands::request))
        .routes(routes!(reads::stream))
        .routes(routes!(commands::stop))
        .routes(routes!(commands::heartbeat))
        .routes(routes!(commands::report_event))
}

//! `/internal/v1/codex/workers`: the original contract's create/reattach, snapshot, requests,
//! stream and stop routes, plus the additive list, heartbeat and reported-events routes.
//! Responses are wrapped in `{"data": …}` as the original's were.
//!
//! # Layout
//! - `commands.rs`: the routes that append (create, requests, stop, heartbeat, events): each
//!   handler with its request and response types, and the routes they are mounted at;
//! - `reads.rs`: the routes that read (list, snapshot, stream), likewise;
//! - `types.rs`: the wrapper and views both answer with;
//! - `helpers.rs`: the checks every handler shares (ownership, bounded text).

mod commands;
mod helpers;
mod reads;
mod types;

use utoipa_axum::router::OpenApiRouter;

use crate::app::App;

pub use commands::{
    CreateWorkerRequest, HeartbeatRequest, ReportEventRequest, ReportedEvent, StopRequest,
    WorkerRequestBody, WorkerRequestEnvelope, WorkerRequestResult,
};
pub use reads::{StatusFilter, WorkerListQuery, WorkerStreamQuery};
pub use types::{Data, WorkerCommandResponse, WorkerView};

/// The worker routes, each mounted at the path of its handler's `#[utoipa::path]` (which also
/// puts it in the OpenAPI document). Each handler file declares its own routes.
pub fn router() -> OpenApiRouter<App> {
    commands::router().merge(reads::router())
}

//! `/internal/v1/runs`: the original contract's frames, cancel, snapshot and stream routes, plus
//! the additive create, start, finish and list routes.
//!
//! Ownership is checked against the run's own `run.created` record (owner, thread, tenant); a
//! `user_id` in a body is never trusted. Responses carry both the snake_case fields and the
//! original camelCase aliases (`runId`, `idempotentReplay`, …).
//!
//! # Layout
//! - this file: the routes;
//! - `helpers.rs`: the checks every handler shares (ownership, bounded text);
//! - `types.rs`: the request, response and query types (their schemas are in the document);
//! - `commands.rs`: the handlers that append (create, frames, cancel, start, finish);
//! - `reads.rs`: the handlers that read (list, snapshot, stream).

mod commands;
mod helpers;
mod reads;
mod types;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

pub use types::{
    CancelRequest, CancelResponse, CreateRunRequest, FinishRequest, FinishStatus, FrameRequest,
    FrameResponse, ListQuery, RunCommandResponse, RunList, RunView, StartRequest, StreamQuery,
    ThreadQuery,
};

/// The run routes, each mounted at the path of its handler's `#[utoipa::path]` (which also puts
/// it in the OpenAPI document).
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(commands::create_run, reads::list_runs))
        .routes(routes!(reads::snapshot))
        .routes(routes!(commands::append_frame))
        .routes(routes!(commands::cancel))
        .routes(routes!(commands::start))
        .routes(routes!(commands::finish))
        .routes(routes!(reads::stream))
}

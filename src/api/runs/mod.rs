//! `/internal/v1/runs`: the original contract's frames, cancel, snapshot and stream routes, plus
//! the additive create, start, finish and list routes.
//!
//! Ownership is checked against the run's own `run.created` record (owner, thread, tenant); a
//! `user_id` in a body is never trusted. Responses carry both the snake_case fields and the
//! original camelCase aliases (`runId`, `idempotentReplay`, …).
//!
//! # Layout
//! - `commands.rs`: the routes that append (create, frames, cancel, start, finish): each handler
//!   with its request and response types, and the routes they are mounted at — a new run
//!   command is added in this one file of the API;
//! - `reads.rs`: the routes that read (list, snapshot, stream), likewise;
//! - `types.rs`: the views both answer with (a run, a command's outcome);
//! - `helpers.rs`: the checks every handler shares (ownership, bounded text).

mod commands;
mod helpers;
mod reads;
mod types;

use utoipa_axum::router::OpenApiRouter;

use crate::app::App;

pub use commands::{
    CancelRequest, CancelResponse, CreateRunRequest, FinishRequest, FinishStatus, FrameRequest,
    FrameResponse, StartRequest,
};
pub use reads::{ListQuery, RunList, StreamQuery, ThreadQuery};
pub use types::{RunCommandResponse, RunView};

/// The run routes, each mounted at the path of its handler's `#[utoipa::path]` (which also puts
/// it in the OpenAPI document). Each handler file declares its own routes.
pub fn router() -> OpenApiRouter<App> {
    commands::router().merge(reads::router())
}

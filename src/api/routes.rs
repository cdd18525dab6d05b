//! The runtime's own documented `/internal/v1` routes, in one place: the internal router
//! ([`super::internal_router`]) mounts them and the OpenAPI document ([`super::openapi::api_doc`])
//! describes them.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{health, runs, workers};
use crate::app::App;

/// The runtime's own documented `/internal/v1` routes: health, runs and workers.
pub fn internal_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(health::internal_health))
        .merge(runs::router())
        .merge(workers::router())
}

//! Health and operations endpoints: the contract's `GET /internal/v1/health`, plus `/healthz`
//! (liveness), `/readyz` (journal reachable and migrated, not shutting down) and `/metrics`
//! (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::auth::Authenticated;
use crate::app::App;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// `openagents-runtime`.
    pub service: String,
    pub version: String,
}

/// Health probe of the internal contract (requires a signature like every `/internal/v1` route).
#[utoipa::path(get, path = "/internal/v1/health", tag = "health",
    responses((status = 200, body = Health), (status = 401, body = crate::api::error::ErrorEnvelope)))]
pub async fn internal_health(_auth: Authenticated) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        service: crate::SERVICE.into(),
        version: crate::VERSION.into(),
    })
}

/// Liveness: the process is serving HTTP.
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        service: crate::SERVICE.into(),
        version: crate::VERSION.into(),
    })
}

#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    journal: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Readiness: `200` when the journal answers and every migration this binary knows is applied;
/// `503` otherwise, and from the moment shutdown begins.
pub async fn readyz(State(app): State<App>) -> Response {
    let journal = app.database().backend_name();
    match readiness(&app).await {
        Ok(()) => Json(Readiness {
            status: "ready",
            journal,
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not_ready",
                journal,
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// Whether this process is ready (see [`readyz`]); the error is the reason it is not.
///
/// # Errors
/// A short, secret-free reason: shutting down, journal unreachable, migrations pending.
pub async fn readiness(app: &App) -> Result<(), String> {
    if app.is_shutting_down() {
        return Err("shutting down".into());
    }
    if let Err(error) = app.database().ping().await {
        tracing::warn!(error.message = %error, "readiness: journal unreachable");
        return Err("journal unreachable".into());
    }
    match app.database().pending_migrations().await {
        Ok(pending) if pending.is_empty() => Ok(()),
        Ok(pending) => Err(format!("{} migration(s) not applied", pending.len())),
        Err(error) => {
            tracing::warn!(error.message = %error, "readiness: cannot read migrations");
            Err("cannot read migrations".into())
        }
    }
}

/// Prometheus metrics of every crate in the process.
pub async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics().render(),
    )
        .into_response()
}

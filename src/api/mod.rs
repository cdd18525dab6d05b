//! The HTTP API (axum).
//!
//! # Layout
//! - [`runs`], [`workers`], [`health`]: one module per resource, each with its routes, wire types
//!   and handlers.
//! - [`auth`]: internal signature middleware and the [`auth::Caller`] extractor.
//! - [`command`]: the idempotency → execute → respond end every command handler shares, and the
//!   route its `Idempotency-Key` is bound to.
//! - [`error`]: the error envelope and every failure's status and code.
//! - [`extract`]: extractors whose rejections use the envelope (bodies, ids, queries, headers).
//! - [`stream`]: Server-Sent Events with the contract's cursor rules.
//! - [`openapi`]: the OpenAPI document.
//! - [`schema`]: schemas the route declarations share (ids).
//!
//! Every API route is declared once, by its handler's `#[utoipa::path]`: `utoipa_axum::routes!`
//! mounts the handler at that path and adds it to the OpenAPI document ([`openapi::api_doc`]).
//! [`internal_routes`] holds the runtime's own `/internal/v1` routes and [`internal_router`]
//! mounts them (signature auth applies to each matched route); [`ops_router`] the unauthenticated operations endpoints; [`compose`] stacks the
//! process-wide layers (request ids, trace spans, metrics, body limit, panic catcher, envelope
//! fallbacks) over both.

pub mod auth;
pub mod command;
pub mod error;
pub mod extract;
pub mod health;
pub mod openapi;
mod routes;
pub mod runs;
pub mod schema;
pub mod stream;
pub mod workers;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::App;

pub use routes::internal_routes;

/// The `/internal/v1` routes of the runtime itself, and the document itself (not an operation of
/// the document). [`compose`] puts them, and every other component's internal routes, behind
/// internal signature auth.
pub fn internal_router(app: App) -> Router {
    internal_routes()
        .route("/internal/v1/openapi.json", get(openapi::document))
        .with_state(app)
        .into()
}

/// Unauthenticated operations endpoints: `/healthz`, `/readyz`, `/metrics`.
pub fn ops_router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(app)
}

/// The main listener's router: `internal` routes behind signature auth and `public` routes, under the
/// process-wide layers.
pub fn compose(app: App, internal: Router, public: Router) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request| {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let traceparent = header("traceparent");
        tracing::info_span!(
            "http.request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %header("x-request-id"),
            traceparent = %traceparent,
            tracestate = %header("tracestate"),
            trace_id = %extract::trace_id_of(&traceparent).unwrap_or_default(),
        )
    });
    // The signature check is applied here, after every component merged its internal routes
    // (a route layer only covers the routes that exist when it is added).
    internal
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_signature,
        ))
        .merge(public)
        .fallback(error::not_found_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn(require_utf8_path))
        .layer(DefaultBodyLimit::max(app.config().http.body_limit_bytes))
        .layer(middleware::from_fn(observe))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

/// A path that percent-decodes to invalid UTF-8 (`/internal/v1/runs/%FF/snapshot`) is `400
/// invalid_request` with `details.reason: "invalid_path"`, before any route's extractors run:
/// axum's `Path` and `RawPathParams` rejections (in the signature middleware and in every
/// component's handlers) would otherwise answer in plain text, and no route can serve such a
/// path anyway.
async fn require_utf8_path(request: Request, next: Next) -> Response {
    if percent_decodes_to_utf8(request.uri().path()) {
        next.run(request).await
    } else {
        error::ApiError::invalid("the request path is not valid UTF-8 once percent-decoded")
            .with_details(serde_json::json!({ "reason": "invalid_path" }))
            .into_response()
    }
}

/// Percent-decodes `path` the way axum decodes path parameters (a `%` not followed by two hex
/// digits stays as it is) and says whether the bytes are UTF-8.
fn percent_decodes_to_utf8(path: &str) -> bool {
    if !path.contains('%') {
        return true;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let hex = |b: Option<&u8>| {
        b.and_then(|b| char::from(*b).to_digit(16))
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(hi * 16 + lo);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Records `http_requests_total` and `http_request_duration_seconds` by route and status.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The metric label of a method: the standard ones by name, anything else `other`. Labels come
/// only from fixed sets (methods here, matched route templates or `unmatched`, status codes), so
/// unauthenticated traffic cannot grow `/metrics` (docs/security.md, "Bounded by construction").
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    error::ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        error::ErrorCode::InternalError,
        "internal error",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::percent_decodes_to_utf8;

    #[test]
    fn paths_are_checked_for_utf8_after_percent_decoding() {
        for ok in [
            "/internal/v1/runs/run_1/snapshot",
            "/internal/v1/runs/r%C3%A9/snapshot",
            "/a%2",
            "/a%zz",
            "/100%",
        ] {
            assert!(percent_decodes_to_utf8(ok), "{ok}");
        }
        for bad in ["/internal/v1/runs/%FF", "/r/%C3%28/cancel", "/%c3"] {
            assert!(!percent_decodes_to_utf8(bad), "{bad}");
        }
    }
}

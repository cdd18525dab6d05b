//! The HTTP surface: the WebSocket upgrade at `/sync/socket/websocket` (token check → 403,
//! connection limit → 503, then one tracked task per socket), the routers the root composes,
//! and a standalone `serve` for tests, the bench and single-purpose deployments.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::connection::InboundError;
use crate::gateway::Gateway;
use crate::http::{self, ApiError};
use crate::protocol::{ErrorCode, PHOENIX_VSN, PROTOCOL_VERSION};
use crate::session::Session;

/// The socket path (Phoenix's `/socket` endpoint + `/websocket` transport).
pub const SOCKET_PATH: &str = "/sync/socket/websocket";
/// `schema_version`s this gateway serves.
pub const SUPPORTED_SCHEMA_VERSIONS: &[&str] = &["1"];

/// Per-socket read buffer: small, so idle sockets stay cheap (client frames are small).
/// How far past `max_inbound_frame_bytes` the socket reads a frame before it gives up on it
/// mid-way (see `upgrade`): bounded memory, and a clean error for near misses.
const INBOUND_SLACK: usize = 16 * 1024;
const READ_BUFFER: usize = 4 * 1024;
/// Per-socket write buffer target before a write reaches the socket.
const WRITE_BUFFER: usize = 32 * 1024;

// Each HTTP route is declared once, by its handler's `#[utoipa::path]`: `routes!` mounts the
// handler at that path and adds the operation to the router's OpenAPI document ([`openapi`]).

/// HTTP hydration (sync-token auth).
fn hydration() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new().routes(routes!(http::hydrate))
}

/// Session revocation (internal-signature auth, applied by the root).
fn revocation() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new()
        .routes(routes!(http::revoke))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
}

/// Sync token minting (internal-signature auth, applied by the root).
fn minting() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new()
        .routes(routes!(http::mint_token))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
}

/// The OpenAPI operations of every HTTP route above (the socket is not an HTTP API route).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = hydration().into_openapi();
    doc.merge(revocation().into_openapi());
    doc.merge(minting().into_openapi());
    doc
}

/// Public routes authorised by sync tokens: the socket and HTTP hydration.
pub fn routes(gateway: Gateway) -> Router {
    hydration()
        .route(SOCKET_PATH, get(upgrade))
        .with_state(gateway)
        .into()
}

/// `POST /internal/v1/sync/sessions/revoke`: the root mounts it under its internal-signature
/// auth like every `/internal/v1` route.
pub fn internal_routes(gateway: Gateway) -> Router {
    revocation().with_state(gateway).into()
}

/// `POST /api/sync/token`: token minting for deployments without a control plane. The root
/// must put it behind the internal-signature auth (it is not under `/internal/v1`).
pub fn token_routes(gateway: Gateway) -> Router {
    minting().with_state(gateway).into()
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

async fn upgrade(
    State(gateway): State<Gateway>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(vsn) = params.get("vsn") {
        if vsn != PHOENIX_VSN {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_vsn",
                format!("only vsn={PHOENIX_VSN} is supported"),
            );
        }
    }
    let config = gateway.config();
    if config.require_client_compat {
        if params.get("protocol_version").map(String::as_str) != Some(PROTOCOL_VERSION) {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_protocol_version",
                format!("protocol_version={PROTOCOL_VERSION} is required"),
            );
        }
        if !params
            .get("schema_version")
            .is_some_and(|v| SUPPORTED_SCHEMA_VERSIONS.contains(&v.as_str()))
        {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_schema_version",
                format!("schema_version must be one of {SUPPORTED_SCHEMA_VERSIONS:?}"),
            );
        }
    }
    let token = params
        .get("token")
        .map(String::as_str)
        .or_else(|| http::bearer(&headers))
        .unwrap_or("");
    let auth = match gateway.verifier().verify(token) {
        Ok(auth) => auth,
        Err(e) => {
            let code = match e.code() {
                ErrorCode::ReauthRequired => "reauth_required",
                _ => "unauthorized",
            };
            return refuse(StatusCode::FORBIDDEN, code, e.to_string());
        }
    };
    http::note_credentials(&gateway, &auth).await;
    let Ok(permit) = gateway.connections().clone().try_acquire_owned() else {
        let mut response = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this node is at its connection limit; retry another node or later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    tracing::debug!(
        subject = %auth.subject,
        client = params.get("client").map(String::as_str).unwrap_or(""),
        client_build_id = params.get("client_build_id").map(String::as_str).unwrap_or(""),
        "sync socket accepted"
    );
    // The session enforces `max_inbound_frame_bytes` itself; the socket reads a little past it
    // (a bounded slack), so a frame just over the limit is read whole and answered with an
    // error and Close 1009. Cut off mid-frame instead, its unread bytes would make the kernel
    // reset the connection, and the client could lose that answer.
    let max_frame = config.max_inbound_frame_bytes.saturating_add(INBOUND_SLACK);
    let tracker = gateway.tracker().clone();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                // Held for the socket's lifetime: the connection limit.
                let _permit = permit;
                let stats = gateway.stats();
                stats.sockets_open.fetch_add(1, Ordering::Relaxed);
                stats.sockets_total.fetch_add(1, Ordering::Relaxed);
                let (sink, stream) = socket.split();
                let stream = stream.map(|item| item.map_err(InboundError::from_axum));
                Session::run(gateway.clone(), auth, sink, stream).await;
                gateway.stats().sockets_open.fetch_sub(1, Ordering::Relaxed);
            })
        })
}

/// Serves `router` on `listener` until `shutdown`, then waits for the gateway's sockets to
/// close (each sends Close 1001) and its background tasks to stop.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    gateway: Gateway,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let result = axum::serve(listener.tap_io(no_delay), router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    gateway.closed().await;
    result
}

/// Turns Nagle's algorithm off on an accepted socket (Khala's and every other listener of the
/// runtime). Each response and each burst of WebSocket frames is written whole and flushed; with
/// Nagle on, a small write that follows one the peer has not acknowledged yet waits for that
/// acknowledgement, which the peer may delay by 40 ms or more: a Khala update queued behind the
/// previous one would wait for it (docs/adr/0131-tcp-nodelay.md).
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(error.message = %error, "cannot set TCP_NODELAY on an accepted socket");
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn a_socket_accepted_through_the_tap_has_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Without the tap an accepted socket keeps the OS default (Nagle on).
        let mut plain = listener;
        let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = Listener::accept(&mut plain).await;
        assert!(!stream.nodelay().unwrap());

        let mut tapped = plain.tap_io(no_delay);
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = Listener::accept(&mut tapped).await;
        assert!(stream.nodelay().unwrap());
    }
}

//! The proxy: a paid request goes on to its route's upstream and the answer comes back.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::{error_json, GatewayRoute, L402Gateway};

/// Largest request body the proxy forwards.
pub const MAX_PROXY_BODY: usize = 1024 * 1024;

impl L402Gateway {
    pub(super) async fn proxy(
        &self,
        route: &GatewayRoute,
        rest: &str,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, MAX_PROXY_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return error_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body too large",
                )
            }
        };
        let mut url = route.upstream_url.clone();
        if !rest.is_empty() {
            if !url.ends_with('/') {
                url.push('/');
            }
            url.push_str(rest);
        }
        if let Some(query) = parts.uri.query() {
            url.push('?');
            url.push_str(query);
        }
        let mut upstream = self
            .http
            .request(parts.method.clone(), &url)
            .timeout(Duration::from_millis(route.timeout_ms.max(1)));
        for (name, value) in &parts.headers {
            let skip = matches!(
                name.as_str(),
                "authorization"
                    | "host"
                    | "connection"
                    | "content-length"
                    | "transfer-encoding"
                    | "te"
                    | "upgrade"
                    | "proxy-authorization"
                    | "keep-alive"
            );
            if !skip {
                upstream = upstream.header(name, value);
            }
        }
        let result = upstream.body(body).send().await;
        match result {
            Ok(response) => {
                let status = response.status();
                let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
                let bytes: Bytes = response.bytes().await.unwrap_or_default();
                let mut out = Response::new(Body::from(bytes));
                *out.status_mut() = status;
                if let Some(ct) = content_type {
                    out.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                out
            }
            Err(error) => {
                tracing::warn!(route = %route.id, error.message = %error, "upstream request failed");
                error_json(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "the upstream did not answer",
                )
            }
        }
    }
}

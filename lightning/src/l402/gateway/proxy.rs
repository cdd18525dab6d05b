//! The proxy: a paid request goes on to its route's upstream and the answer comes back, both bodies
//! streamed as they arrive (never buffered whole), every end-to-end header passed through and the
//! hop-by-hop ones dropped, in both directions (ADR 0121).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures::{Stream, StreamExt};

use super::{error_json, GatewayRoute, L402Gateway};

/// Largest request body the proxy forwards. The body streams to the upstream, so the limit is
/// counted as it goes: a request that declares more (`Content-Length`) is refused before the
/// upstream is called, and one that sends more is cut off mid-way (`413`).
pub const MAX_PROXY_BODY: usize = 1024 * 1024;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message, so they
/// never cross the proxy. With them go every `Proxy-*` header and whatever `Connection` names.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Why a request body stopped on its way upstream.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("reading the request body: {0}")]
    Read(#[source] axum::Error),
    #[error("the request body is over {} bytes", MAX_PROXY_BODY)]
    TooLarge,
}

/// Removes the hop-by-hop headers from `headers` and keeps every other value (repeated ones too),
/// in order.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed).chain(&proxy) {
        headers.remove(name);
    }
}

/// The request body as a stream of its chunks, as they arrive. It fails, and sets `over_limit`,
/// once more than [`MAX_PROXY_BODY`] bytes came.
fn limited(
    body: Body,
    over_limit: Arc<AtomicBool>,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    let mut seen: usize = 0;
    body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(BodyError::Read)?;
        seen = seen.saturating_add(chunk.len());
        if seen > MAX_PROXY_BODY {
            over_limit.store(true, Ordering::Relaxed);
            return Err(BodyError::TooLarge);
        }
        Ok(chunk)
    })
}

impl L402Gateway {
    /// Forwards a paid request to `route`'s upstream (`rest` appended to its URL, the query kept)
    /// and streams the answer back: the upstream's status, end-to-end headers and body. The
    /// credential (`Authorization`) and `Host` are not forwarded. The route's timeout bounds the
    /// whole exchange, the response body included.
    pub(super) async fn proxy(
        &self,
        route: &GatewayRoute,
        rest: &str,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_PROXY_BODY as u64) {
            return too_large();
        }
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
        // A body of unknown length stays chunked upstream (the client sets `Transfer-Encoding`
        // only per hop; without it a GET's streamed body would be sent as empty).
        let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::HOST);
        if chunked {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let over_limit = Arc::new(AtomicBool::new(false));
        let mut upstream = self
            .http
            .request(parts.method, &url)
            .timeout(Duration::from_millis(route.timeout_ms.max(1)))
            .headers(headers);
        if !body.is_end_stream() {
            upstream = upstream.body(reqwest::Body::wrap_stream(limited(
                body,
                over_limit.clone(),
            )));
        }
        match upstream.send().await {
            Ok(mut response) => {
                let status = response.status();
                let mut headers = std::mem::take(response.headers_mut());
                strip_hop_by_hop(&mut headers);
                let mut out = Response::new(Body::from_stream(response.bytes_stream()));
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                out
            }
            Err(_) if over_limit.load(Ordering::Relaxed) => too_large(),
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

fn too_large() -> Response {
    error_json(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "request body too large",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("content-type", "text/plain"),
            ("content-length", "12"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-custom", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "content-type", "set-cookie", "x-custom"]
        );
        let cookies: Vec<&HeaderValue> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
}

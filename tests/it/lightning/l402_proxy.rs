//! The L402 gateway's proxy against a real upstream (axum on a random port): bodies stream both
//! ways (the first bytes cross before the rest exist, so neither is buffered whole), the upstream's
//! status and end-to-end headers (repeated ones too) reach the client, hop-by-hop headers cross in
//! neither direction, and the request body limit holds as a streaming limit (ADR 0121).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode as UpstreamStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use lightning::l402::gateway::MAX_PROXY_BODY;
use lightning::testing::FakeLnd;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::l402::{paywalls, serve, start_gateway, Gateway, OPS};

/// `/large` sends this many chunks of [`CHUNK`] bytes (8 MiB in all).
const CHUNKS: usize = 128;
const CHUNK: usize = 64 * 1024;
/// How long a test waits for bytes that a buffering proxy would hold back forever.
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// The upstream's shared state: the hand-offs that prove streaming, and what it received.
#[derive(Default)]
struct Upstream {
    /// Lets `/large` send past its first chunk (the test notifies once it has read that chunk).
    release: Notify,
    /// Notified by `/echo` when the first bytes of its request body arrived.
    first_chunk: Notify,
    /// The body `/echo` received last, whole.
    received: Mutex<Vec<u8>>,
    /// Requests that reached `/limit`.
    limit_hits: AtomicUsize,
}

/// The byte at `offset` of `/large`'s body.
fn large_byte(offset: usize) -> u8 {
    u8::try_from((offset / CHUNK) % 251).expect("below 251")
}

/// A request body the upstream can check byte for byte.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + i / 7) % 256).expect("below 256"))
        .collect()
}

async fn large(State(up): State<Arc<Upstream>>) -> Response {
    let chunks = futures::stream::unfold(0usize, move |i| {
        let up = up.clone();
        async move {
            if i == CHUNKS {
                return None;
            }
            if i == 1 {
                // Nothing more exists until the client has read the first chunk through the proxy.
                up.release.notified().await;
            }
            let chunk = Bytes::from(vec![large_byte(i * CHUNK); CHUNK]);
            Some((Ok::<_, std::io::Error>(chunk), i + 1))
        }
    });
    (
        [("content-type", "application/octet-stream")],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// Answers `201` with the request's headers (name → values) as JSON, and a set of end-to-end and
/// hop-by-hop headers of its own.
async fn headers(request_headers: HeaderMap) -> Response {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &request_headers {
        seen.entry(name.as_str().to_owned())
            .or_default()
            .push(value.to_str().unwrap_or("<binary>").to_owned());
    }
    let mut response = (UpstreamStatus::CREATED, Json(json!(seen))).into_response();
    for (name, value) in [
        ("x-custom", "yes"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("connection", "x-upstream-hop"),
        ("x-upstream-hop", "secret"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic realm=\"upstream\""),
    ] {
        response.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// Reads the request body chunk by chunk (announcing the first), keeps it and answers its length.
async fn echo(State(up): State<Arc<Upstream>>, body: Body) -> Response {
    let mut chunks = body.into_data_stream();
    let mut received = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return UpstreamStatus::BAD_REQUEST.into_response();
        };
        if received.is_empty() && !chunk.is_empty() {
            up.first_chunk.notify_one();
        }
        received.extend_from_slice(&chunk);
    }
    let len = received.len();
    *up.received.lock().unwrap() = received;
    Json(json!({ "len": len })).into_response()
}

async fn limit(State(up): State<Arc<Upstream>>) -> UpstreamStatus {
    up.limit_hits.fetch_add(1, Ordering::SeqCst);
    UpstreamStatus::OK
}

async fn busy() -> Response {
    (
        UpstreamStatus::SERVICE_UNAVAILABLE,
        [("retry-after", "7")],
        Json(json!({ "busy": true })),
    )
        .into_response()
}

/// The upstream under `/content` (the deployed route `/p/*` appends the rest of the path).
async fn upstream(up: Arc<Upstream>, shutdown: &CancellationToken) -> String {
    serve(
        Router::new()
            .route("/content/large", get(large))
            .route("/content/headers", get(headers))
            .route("/content/echo", post(echo))
            .route("/content/limit", post(limit))
            .route("/content/busy", get(busy))
            .with_state(up),
        shutdown,
    )
    .await
}

/// A gateway with `/p/*` deployed in front of the upstream, and a valid credential for it (the
/// smoke credential an ops caller gets with the challenge: no payment needed).
struct Setup {
    gw: Gateway,
    up: Arc<Upstream>,
    credential: String,
    http: reqwest::Client,
    _fake: FakeLnd,
}

impl Setup {
    async fn start(shutdown: &CancellationToken) -> Setup {
        let fake = FakeLnd::start().await;
        let up = Arc::new(Upstream::default());
        let base = upstream(up.clone(), shutdown).await;
        let gw = start_gateway(&fake, shutdown).await;
        let compiled = lightning::l402::compile::compile(
            &lightning::l402::compile::paywalls_from_json(&paywalls(&base, "/p/*", 1_000)).unwrap(),
        );
        gw.gateway
            .deploy(
                "dep_proxy",
                None,
                &compiled.config_hash,
                &compiled.aperture_yaml,
            )
            .unwrap();
        let http = reqwest::Client::new();
        let challenge = http
            .get(format!("{}/p/headers", gw.base))
            .bearer_auth(OPS)
            .send()
            .await
            .unwrap();
        assert_eq!(challenge.status(), StatusCode::PAYMENT_REQUIRED);
        let credential = challenge.headers()["x-oa-smoke-auth"]
            .to_str()
            .unwrap()
            .to_owned();
        Setup {
            gw,
            up,
            credential,
            http,
            _fake: fake,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.base)
    }

    /// Sends `body` chunked (no `Content-Length`) through the gateway to `/echo`: the first chunk,
    /// then (when `wait_for_upstream`) nothing more until the upstream has seen it, then the rest.
    async fn post_streamed(&self, body: &[u8], wait_for_upstream: bool) -> reqwest::Response {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let request = self
            .http
            .post(self.url("/p/echo"))
            .header("authorization", &self.credential)
            .body(reqwest::Body::wrap_stream(ReceiverStream::new(rx)));
        let sent = tokio::spawn(request.send());
        let mut chunks = body.chunks(CHUNK);
        tx.send(Ok(Bytes::copy_from_slice(chunks.next().unwrap())))
            .await
            .unwrap();
        if wait_for_upstream {
            tokio::time::timeout(STREAM_WAIT, self.up.first_chunk.notified())
                .await
                .expect("the upstream gets the first chunk before the rest was even sent");
        }
        for chunk in chunks {
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                break; // the gateway stopped reading (over the limit)
            }
        }
        drop(tx);
        sent.await.unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_streams_through_before_the_upstream_has_produced_it_all() {
    let shutdown = CancellationToken::new();
    let s = Setup::start(&shutdown).await;
    let mut response = tokio::time::timeout(
        STREAM_WAIT,
        s.http
            .get(s.url("/p/large"))
            .header("authorization", &s.credential)
            .send(),
    )
    .await
    .expect("the answer starts before the upstream's body is complete")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let first = tokio::time::timeout(STREAM_WAIT, response.chunk())
        .await
        .expect("the first chunk crosses the proxy on its own")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    s.up.release.notify_one();
    let mut offset = 0;
    let mut check = |chunk: &[u8]| {
        for (i, byte) in chunk.iter().enumerate() {
            assert_eq!(*byte, large_byte(offset + i), "byte {}", offset + i);
        }
        offset += chunk.len();
    };
    check(&first);
    while let Some(chunk) = response.chunk().await.unwrap() {
        check(&chunk);
    }
    assert_eq!(offset, CHUNKS * CHUNK, "all 8 MiB arrive");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_headers_pass_through_and_hop_by_hop_headers_cross_in_neither_direction() {
    let shutdown = CancellationToken::new();
    let s = Setup::start(&shutdown).await;
    let response = s
        .http
        .get(s.url("/p/headers?q=1"))
        .header("authorization", &s.credential)
        .header("connection", "x-client-hop")
        .header("x-client-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eDp5")
        .header("x-forward-me", "a")
        .header("x-forward-me", "b")
        .send()
        .await
        .unwrap();

    // Upstream → client: the status and every end-to-end header, repeated values in order.
    assert_eq!(response.status(), StatusCode::CREATED);
    let got = response.headers();
    assert_eq!(got["content-type"], "application/json");
    assert_eq!(got["x-custom"], "yes");
    let values = |name: &str| -> Vec<&str> {
        got.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(values("x-multi"), ["one", "two"]);
    assert_eq!(values("set-cookie"), ["a=1", "b=2"]);
    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(got.get(hop).is_none(), "{hop} crossed the proxy: {got:?}");
    }
    assert!(
        !values("connection")
            .iter()
            .any(|v| v.contains("x-upstream-hop")),
        "{got:?}"
    );

    // Client → upstream: end-to-end headers (both values), not the hop-by-hop ones nor the
    // credential.
    let seen: BTreeMap<String, Vec<String>> = response.json().await.unwrap();
    assert_eq!(seen["x-forward-me"], ["a", "b"], "{seen:?}");
    for hop in [
        "x-client-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "authorization",
    ] {
        assert!(
            !seen.contains_key(hop),
            "{hop} reached the upstream: {seen:?}"
        );
    }
    assert!(
        !seen
            .get("connection")
            .is_some_and(|v| v.iter().any(|v| v.contains("x-client-hop"))),
        "{seen:?}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_body_streams_to_the_upstream_intact() {
    let shutdown = CancellationToken::new();
    let s = Setup::start(&shutdown).await;

    // Chunked, and the upstream sees its first chunk before the client has sent the rest.
    let body = payload(600 * 1024 + 123);
    let response = s.post_streamed(&body, true).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["len"], body.len());
    assert!(
        *s.up.received.lock().unwrap() == body,
        "the body arrived intact"
    );

    // With a Content-Length, exactly at the limit.
    let body = payload(MAX_PROXY_BODY);
    let response = s
        .http
        .post(s.url("/p/echo"))
        .header("authorization", &s.credential)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        *s.up.received.lock().unwrap() == body,
        "the body arrived intact"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_is_refused_whether_declared_or_streamed() {
    let shutdown = CancellationToken::new();
    let s = Setup::start(&shutdown).await;

    // Declared: refused before the upstream is called.
    let response = s
        .http
        .post(s.url("/p/limit"))
        .header("authorization", &s.credential)
        .body(vec![0u8; MAX_PROXY_BODY + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "payload_too_large");
    assert_eq!(s.up.limit_hits.load(Ordering::SeqCst), 0);

    // Streamed without a length: cut off once it passes the limit, and never delivered whole.
    let response = s
        .post_streamed(&payload(MAX_PROXY_BODY + CHUNK), false)
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(s.up.received.lock().unwrap().is_empty());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_status_is_passed_through_with_its_headers_and_body() {
    let shutdown = CancellationToken::new();
    let s = Setup::start(&shutdown).await;
    let response = s
        .http
        .get(s.url("/p/busy"))
        .header("authorization", &s.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "busy": true }));
    shutdown.cancel();
}

//! The executor's HTTP API, as the original served it: `GET /healthz`, `GET /status`,
//! `POST /pay-bolt11`, bearer auth with a constant-time compare, the same success, denial and error
//! shapes. [`router`] returns an `axum::Router` for the composition root to mount.

use std::sync::Arc;

use aggregates::ids::{GuestScope, Owner, RunId, UserId};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::service::{PayError, PayInput, PaymentExecutor};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The executor's routes. Mount them on their own listener (or under a prefix): `/healthz` would
/// collide with the runtime's own.
pub fn router(executor: Arc<PaymentExecutor>) -> Router {
    Router::new()
        .route("/healthz", get(healthz).fallback(method_not_allowed::<GET>))
        .route("/status", get(status).fallback(method_not_allowed::<GET>))
        .route(
            "/pay-bolt11",
            post(pay_bolt11).fallback(method_not_allowed::<POST>),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(executor)
}

fn request_id_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn json_response(status: StatusCode, request_id: &str, body: Value, challenge: bool) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    if challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"wallet-executor\""),
        );
    }
    response
}

fn error_body(request_id: &str, code: &str, message: &str, details: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("requestId".into(), json!(request_id));
    error.insert("code".into(), json!(code));
    error.insert("message".into(), json!(message));
    if let Some(details) = details {
        error.insert("details".into(), details);
    }
    json!({ "ok": false, "error": Value::Object(error) })
}

/// `None` when authorised; else the 401 response.
fn authorize(
    executor: &PaymentExecutor,
    headers: &HeaderMap,
    request_id: &str,
) -> Option<Response> {
    let expected = executor.config().auth_token.as_ref()?;
    let provided = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|raw| {
            let (scheme, token) = raw.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty());
    let ok = provided
        .map(|token| bool::from(token.as_bytes().ct_eq(expected.as_bytes())))
        .unwrap_or(false);
    if ok {
        return None;
    }
    Some(json_response(
        StatusCode::UNAUTHORIZED,
        request_id,
        error_body(
            request_id,
            "unauthorized",
            "missing or invalid bearer token",
            None,
        ),
        true,
    ))
}

/// `200 { ok: true, ready: true }` once the executor takes payments; before that (payments left
/// open by a previous run not yet answered or tracked, or the wallet's lease held elsewhere)
/// `503 { ok: false, ready: false, error: { code: "executor_not_ready" } }`.
async fn healthz(State(executor): State<Arc<PaymentExecutor>>, headers: HeaderMap) -> Response {
    let request_id = request_id_from(&headers).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if executor.is_ready() {
        return json_response(
            StatusCode::OK,
            &request_id,
            json!({ "ok": true, "ready": true, "requestId": request_id }),
            false,
        );
    }
    let not_ready = PayError::NotReady(executor.not_ready_reason());
    let mut body = error_body(&request_id, not_ready.code(), &not_ready.to_string(), None);
    body["ready"] = json!(false);
    json_response(StatusCode::SERVICE_UNAVAILABLE, &request_id, body, false)
}

async fn status(State(executor): State<Arc<PaymentExecutor>>, headers: HeaderMap) -> Response {
    let request_id = request_id_from(&headers).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Some(denied) = authorize(&executor, &headers, &request_id) {
        return denied;
    }
    let status = executor.status().await;
    json_response(
        StatusCode::OK,
        &request_id,
        json!({ "ok": true, "requestId": request_id, "status": status }),
        false,
    )
}

async fn not_found(headers: HeaderMap) -> Response {
    let request_id = request_id_from(&headers).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    json_response(
        StatusCode::NOT_FOUND,
        &request_id,
        error_body(&request_id, "not_found", "route not found", None),
        false,
    )
}

const GET: u8 = 0;
const POST: u8 = 1;

/// `405` with the JSON error shape and an `Allow` header naming the route's method.
async fn method_not_allowed<const ALLOWED: u8>(headers: HeaderMap) -> Response {
    let request_id = request_id_from(&headers).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let allowed = if ALLOWED == POST { "POST" } else { "GET" };
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &request_id,
        error_body(
            &request_id,
            "method_not_allowed",
            &format!("this route only accepts {allowed}"),
            None,
        ),
        false,
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PayBody {
    #[serde(default, alias = "request_id")]
    request_id: Option<String>,
    payment: PayPayment,
    /// The run this payment is for (per-run caps, run receipts).
    #[serde(default)]
    run_id: Option<String>,
    /// The owner (per-owner caps, read-model delivery): a user id or a guest scope.
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    guest_scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PayPayment {
    invoice: String,
    max_amount_msats: u64,
    host: String,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

async fn pay_bolt11(
    State(executor): State<Arc<PaymentExecutor>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let header_request_id = request_id_from(&headers);
    let provisional = header_request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Some(denied) = authorize(&executor, &headers, &provisional) {
        return denied;
    }
    let bytes = match body {
        Ok(bytes) => bytes,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "invalid_request"
            };
            return json_response(
                status,
                &provisional,
                error_body(&provisional, code, &rejection.body_text(), None),
                false,
            );
        }
    };
    let parsed: PayBody = match serde_json::from_slice(&bytes) {
        Ok(parsed) => parsed,
        Err(error) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &provisional,
                error_body(
                    &provisional,
                    "invalid_request",
                    &format!("invalid json body: {error}"),
                    None,
                ),
                false,
            )
        }
    };
    // The idempotency key: x-request-id, else the body's requestId, else a fresh one.
    let request_id = header_request_id
        .or_else(|| {
            parsed
                .request_id
                .clone()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
        })
        .unwrap_or(provisional);
    let invalid = |message: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &request_id,
            error_body(&request_id, "invalid_request", &message, None),
            false,
        )
    };
    let run_id = match header_str(&headers, "x-oa-run-id")
        .map(str::to_owned)
        .or(parsed.run_id)
    {
        Some(raw) => match RunId::parse(raw) {
            Ok(run) => Some(run),
            Err(e) => return invalid(e.to_string()),
        },
        None => None,
    };
    let user = header_str(&headers, "x-oa-user-id")
        .map(str::to_owned)
        .or(parsed.user_id);
    let guest = header_str(&headers, "x-oa-guest-scope")
        .map(str::to_owned)
        .or(parsed.guest_scope);
    let owner = match (user, guest) {
        (Some(user), _) => match UserId::parse(user) {
            Ok(id) => Some(Owner::User(id)),
            Err(e) => return invalid(e.to_string()),
        },
        (None, Some(scope)) => match GuestScope::parse(scope) {
            Ok(scope) => Some(Owner::Guest(scope)),
            Err(e) => return invalid(e.to_string()),
        },
        (None, None) => None,
    };
    let input = PayInput {
        request_id: request_id.clone(),
        invoice: parsed.payment.invoice,
        max_amount_msats: parsed.payment.max_amount_msats,
        host: parsed.payment.host,
        run_id,
        owner,
    };
    match executor.pay(input).await {
        Ok(result) => json_response(
            StatusCode::OK,
            &request_id,
            json!({ "ok": true, "requestId": request_id, "result": result }),
            false,
        ),
        Err(error) => error_response(&request_id, error),
    }
}

fn error_response(request_id: &str, error: PayError) -> Response {
    let (status, details) = match &error {
        PayError::InvalidRequest(_) | PayError::Invoice { .. } => (StatusCode::BAD_REQUEST, None),
        PayError::Denied(denial) => {
            let mut details = Map::new();
            if let Some(host) = &denial.host {
                details.insert("host".into(), json!(host));
            }
            for (key, value) in [
                ("maxAllowedMsats", denial.max_allowed_msats),
                ("quotedAmountMsats", denial.quoted_amount_msats),
                ("windowSpendMsats", denial.window_spend_msats),
                ("windowCapMsats", denial.window_cap_msats),
            ] {
                if let Some(value) = value {
                    details.insert(key.into(), json!(value));
                }
            }
            (StatusCode::FORBIDDEN, Some(Value::Object(details)))
        }
        PayError::Conflict(_) => (StatusCode::CONFLICT, None),
        PayError::Pending(_) => (StatusCode::GATEWAY_TIMEOUT, None),
        PayError::Failed { reason, .. } => (
            StatusCode::BAD_GATEWAY,
            Some(json!({ "failureReason": reason })),
        ),
        PayError::NodeUnavailable(_) => (StatusCode::BAD_GATEWAY, None),
        PayError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        PayError::Internal(cause) => {
            tracing::error!(error.message = %cause, error.cause_chain = ?cause, "pay-bolt11 failed");
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    };
    let message = match &error {
        PayError::Internal(_) => "internal error".to_owned(),
        other => other.to_string(),
    };
    json_response(
        status,
        request_id,
        error_body(request_id, error.code(), &message, details),
        false,
    )
}

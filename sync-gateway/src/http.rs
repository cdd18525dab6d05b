//! HTTP handlers: hydration (`GET /sync/v1/topics/{topic}/docs`, authorised by the sync
//! token), token minting (`POST /api/sync/token`) and session revocation
//! (`POST /internal/v1/sync/sessions/revoke`). Errors are `{"error": {"code", "message"}}`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::mint::{mint, MintError, MintRequest};
use crate::auth::revocation::Revocation;
use crate::auth::{AuthError, RevocationKind};
use crate::gateway::Gateway;
use crate::protocol::ErrorCode;

pub const HYDRATE_PATH: &str = "/sync/v1/topics/{topic}/docs";
pub const MINT_PATH: &str = "/api/sync/token";
pub const REVOKE_PATH: &str = "/internal/v1/sync/sessions/revoke";

/// An HTTP error with a machine-readable code.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorInner>);

#[derive(Debug)]
struct ApiErrorInner {
    status: StatusCode,
    code: String,
    message: String,
    extra: serde_json::Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(Box::new(ApiErrorInner {
            status,
            code: code.to_owned(),
            message: message.into(),
            extra: serde_json::Map::new(),
        }))
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.0.extra.insert(key.to_owned(), value);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiErrorInner {
            status,
            code,
            message,
            extra,
        } = *self.0;
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(code));
        error.insert("message".into(), json!(message));
        error.extend(extra);
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn auth_error(e: &AuthError) -> ApiError {
    let code = match e.code() {
        ErrorCode::ReauthRequired => "reauth_required",
        _ => "unauthorized",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
}

/// Parses a JSON body: 400 for malformed JSON, 422 for the wrong shape.
fn parse_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            e.to_string(),
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydrateQuery {
    pub doc_key: Option<String>,
}

/// One document in a hydration response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HydratedDoc {
    pub doc_key: String,
    pub doc_version: u64,
    pub payload: Value,
    pub payload_hash: String,
    pub watermark: u64,
}

/// `GET /sync/v1/topics/{topic}/docs`: the principal's current docs of the topic and the
/// watermark they are exactly consistent with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HydrateResponse {
    pub topic: String,
    pub watermark: u64,
    pub docs: Vec<HydratedDoc>,
}

pub async fn hydrate(
    State(gateway): State<Gateway>,
    Path(topic): Path<String>,
    query: Result<Query<HydrateQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<HydrateResponse>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    let token = bearer(&headers).ok_or_else(|| auth_error(&AuthError::Missing))?;
    let auth = gateway
        .verifier()
        .verify(token)
        .map_err(|e| auth_error(&e))?;
    if !gateway.known_topics().contains(&topic) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "bad_topic",
            format!("unknown topic {topic:?}"),
        ));
    }
    if !auth.grants(&topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_topic",
            format!("the token's scopes do not include {topic:?}"),
        )
        .with("forbidden_topics", json!([topic])));
    }
    let hydration = gateway
        .source()
        .hydrate(
            &topic,
            query.doc_key.as_deref(),
            &auth.principal.owner_filter(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error.message = %e, error.cause_chain = ?e, "hydration failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                "sync source unavailable; retry with backoff",
            )
        })?;
    Ok(Json(HydrateResponse {
        topic: hydration.topic,
        watermark: hydration.watermark,
        docs: hydration
            .docs
            .into_iter()
            .map(|d| HydratedDoc {
                doc_key: d.doc_key,
                doc_version: d.doc_version,
                payload: d.payload,
                payload_hash: d.payload_hash,
                watermark: d.watermark,
            })
            .collect(),
    }))
}

pub async fn mint_token(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: MintRequest = parse_body(&headers, &body)?;
    let verifier = gateway.verifier();
    match mint(
        verifier.config(),
        gateway.known_topics(),
        &request,
        verifier.now(),
    ) {
        Ok(minted) => Ok((StatusCode::OK, Json(minted)).into_response()),
        Err(MintError::InvalidScope(unknown)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_scope",
            "scopes must name known sync topics",
        )
        .with("invalid_scopes", json!(unknown))),
        Err(MintError::InvalidRequest(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            message,
        )),
        Err(MintError::Unavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sync_token_unavailable",
            "no sync token signing key is configured",
        )),
    }
}

/// `POST /internal/v1/sync/sessions/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub revoked: Vec<Revocation>,
}

pub async fn revoke(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RevokeResponse>, ApiError> {
    let request: RevokeRequest = parse_body(&headers, &body)?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "reason must not be empty",
        ));
    }
    let targets: Vec<(RevocationKind, String)> = [
        (RevocationKind::Session, request.session_id),
        (RevocationKind::Device, request.device_id),
        (RevocationKind::Jti, request.jti),
    ]
    .into_iter()
    .filter_map(|(kind, id)| id.map(|id| (kind, id.trim().to_owned())))
    .collect();
    if targets.is_empty() || targets.iter().any(|(_, id)| id.is_empty()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "name a non-empty session_id, device_id or jti",
        ));
    }
    let config = gateway.verifier().config();
    // Keep the entry until no token it could match is still acceptable.
    let keep_for = config.max_token_age + config.leeway * 2;
    let mut revoked = Vec::new();
    for (kind, id) in targets {
        let revocation = gateway
            .verifier()
            .revocations()
            .revoke(kind, &id, reason, keep_for)
            .await
            .map_err(|e| {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "revocation write failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal", "revocation could not be stored; retry")
            })?;
        tracing::info!(kind = %kind, id = %id, reason, "sync access revoked");
        revoked.push(revocation);
    }
    Ok(Json(RevokeResponse { revoked }))
}

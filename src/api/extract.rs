//! Request extractors whose rejections are the API's error envelope: JSON bodies (size limit,
//! malformed JSON, unknown fields), ids in paths, query strings, trace headers and
//! `Idempotency-Key`.

use aggregates::ids::{IdError, RunId, WorkerId};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::error::{ApiError, ErrorCode};

/// A JSON object body, deserialised into `T` (which should `deny_unknown_fields`), with the raw
/// value kept for request hashing. An empty body counts as `{}`.
pub struct ApiJson<T> {
    pub value: T,
    pub raw: Value,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type
                .to_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let essence = content_type.split(';').next().unwrap_or_default().trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::InvalidRequest,
                    "request bodies must be application/json",
                )
                .with_details(json!({ "reason": "unsupported_media_type" })));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::InvalidRequest,
                    "request body is larger than the configured limit",
                )
                .with_details(json!({ "reason": "body_too_large" }))
            } else {
                ApiError::invalid(format!("cannot read request body: {rejection}"))
                    .with_details(json!({ "reason": "unreadable_body" }))
            }
        })?;
        let raw: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::invalid(format!("malformed JSON: {e}")).with_details(json!({
                    "reason": "malformed_json", "line": e.line(), "column": e.column()
                }))
            })?
        };
        if !raw.is_object() {
            return Err(ApiError::invalid("the request body must be a JSON object")
                .with_details(json!({ "reason": "not_an_object" })));
        }
        let value = T::deserialize(&raw).map_err(|e| {
            ApiError::invalid(format!("invalid request body: {e}"))
                .with_details(json!({ "reason": "invalid_body" }))
        })?;
        Ok(Self { value, raw })
    }
}

/// Ids that can appear as the single path parameter of a route.
pub trait PathIdKind: Sized {
    fn parse_id(value: String) -> Result<Self, IdError>;
}

impl PathIdKind for RunId {
    fn parse_id(value: String) -> Result<Self, IdError> {
        RunId::parse(value)
    }
}

impl PathIdKind for WorkerId {
    fn parse_id(value: String) -> Result<Self, IdError> {
        WorkerId::parse(value)
    }
}

/// A validated id from the route's single path parameter.
pub struct PathId<T>(pub T);

impl<S: Send + Sync, T: PathIdKind> FromRequestParts<S> for PathId<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
        T::parse_id(raw)
            .map(PathId)
            .map_err(|e| ApiError::bad_id(&e))
    }
}

/// A query string deserialised into `T`; failures are `invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| {
                ApiError::invalid(format!("invalid query string: {}", e.body_text()))
                    .with_details(json!({ "reason": "invalid_query" }))
            })
    }
}

/// The request's correlation ids: `x-request-id` (generated when absent) and the trace id of a
/// W3C `traceparent`.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
}

impl RequestMeta {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map(str::to_owned)
        };
        Self {
            request_id: text("x-request-id"),
            trace_id: text("traceparent").and_then(|tp| trace_id_of(&tp)),
        }
    }
}

/// The trace id of a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The optional `Idempotency-Key` header, validated (1–255 visible ASCII characters).
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        let bad = || {
            ApiError::invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
            .with_details(json!({ "field": "Idempotency-Key" }))
        };
        let text = value.to_str().map_err(|_| bad())?.trim();
        if text.is_empty()
            || text.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad());
        }
        Ok(Self(Some(text.to_owned())))
    }
}

/// `Idempotency-Key` as an OpenAPI header parameter, with the rules the extractor checks.
impl utoipa::IntoParams for IdempotencyKey {
    fn into_params(
        _parameter_in: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        vec![ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(utoipa::openapi::Required::False)
            .description(Some(
                "Retry key: a repeat with the same key and request answers like the first time \
                 (`Idempotent-Replayed: true`); the same key with another request is `409 \
                 idempotency_key_reused`",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_IDEMPOTENCY_KEY_LEN))
                    .pattern(Some("^[!-~]+$")),
            ))
            .build()]
    }
}

/// `400 metadata_too_large` when a `metadata` object's JSON is longer than `limit` bytes.
pub fn check_metadata(
    metadata: &serde_json::Map<String, Value>,
    limit: usize,
) -> Result<(), ApiError> {
    let size = serde_json::to_vec(metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(
            ApiError::invalid(format!("metadata is {size} bytes; the limit is {limit}"))
                .with_details(
                    json!({ "reason": "metadata_too_large", "field": "metadata", "limit": limit }),
                ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_trace_id_of_a_valid_traceparent_only() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(trace_id_of("garbage").is_none());
    }
}

//! The console's error responses: the sync lane's envelope `{"error": {"code", "message"}}` with
//! a machine-readable code per case.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Why a console request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// 401 `invalid_login_code`: unknown, already used or expired code (the three are not told
    /// apart, so a guesser learns nothing).
    #[error("the login code is unknown, used or expired")]
    InvalidLoginCode,
    /// 401 `unauthorized` / `reauth_required`: no token, or the verifier refused it.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403 `operator_required`: a valid token, but not the operator principal's.
    #[error("this endpoint needs an operator token (oa_role \"operator\")")]
    OperatorRequired,
    /// 400 `malformed_json` / 422 `invalid_request` / 415 `unsupported_media_type`.
    #[error("{message}")]
    BadRequest {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// 503 `sync_token_unavailable`: no sync-token signing key is configured.
    #[error("no sync-token signing key is configured")]
    MintUnavailable,
    /// 503 `internal`: a store read failed (logged where it happened).
    #[error("{0}")]
    Unavailable(&'static str),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::InvalidLoginCode => (StatusCode::UNAUTHORIZED, "invalid_login_code"),
            Self::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, *code),
            Self::OperatorRequired => (StatusCode::FORBIDDEN, "operator_required"),
            Self::BadRequest { status, code, .. } => (*status, *code),
            Self::MintUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "sync_token_unavailable"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "internal"),
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

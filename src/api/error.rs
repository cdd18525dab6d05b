//! The error envelope `{ "error": { "code", "message", "details" } }` and the mapping from every
//! failure the API can meet (auth, body, ids, domain rejections, journal) to a status and code.
//! Internal failures are logged here, once, and reach the client as an opaque `internal_error`.

use aggregates::ids::IdError;
use aggregates::run::RunError;
use aggregates::worker::WorkerError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::auth::AuthError;
use engine::CommandError;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

/// The machine-readable error codes of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    InvalidRequest,
    NotFound,
    Conflict,
    StaleCursor,
    InternalError,
}

/// The envelope's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Machine-readable specifics, e.g. `{"reason": "run_terminal"}` or `{"field": "run_id"}`.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// `{ "error": … }`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// An API failure: status, code, message and details.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>, reason: &str) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
            .with_details(json!({ "reason": reason }))
    }

    /// An opaque 500; the cause is logged here and never sent.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error.message = %error, error.cause_chain = ?error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal error",
        )
    }

    /// The journal is unreachable: 503, retryable, outcome of an in-flight write unknown.
    pub fn unavailable(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error.message = %error, error.cause_chain = ?error, "journal unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InternalError,
            "the journal is unavailable; retry with the same idempotency key",
        )
        .with_details(json!({ "reason": "journal_unavailable", "retryable": true }))
    }

    /// An id in a path, query or header failed validation.
    pub fn bad_id(error: &IdError) -> Self {
        let field = match error {
            IdError::Empty { kind }
            | IdError::TooLong { kind }
            | IdError::BadCharacter { kind, .. } => *kind,
        };
        Self::invalid(error.to_string()).with_details(json!({ "field": field }))
    }
}

impl From<engine::JournalError> for ApiError {
    fn from(error: engine::JournalError) -> Self {
        if error.is_unavailable() {
            ApiError::unavailable(&error)
        } else {
            ApiError::internal(&error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == ErrorCode::Conflict {
            let reason = self
                .details
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("conflict")
                .to_owned();
            metrics::counter!("runtime_api_conflicts_total", "reason" => reason).increment(1);
        }
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot carry another
            // request; saying so keeps clients from reusing it and failing their next request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match &error {
            AuthError::Forbidden { claim } => ApiError::forbidden(error.to_string())
                .with_details(json!({ "reason": error.reason(), "claim": claim })),
            AuthError::Store(source) => ApiError::unavailable(source),
            AuthError::WeakSecret => ApiError::internal(&error),
            _ => ApiError::unauthorized(error.to_string())
                .with_details(json!({ "reason": error.reason() })),
        }
    }
}

/// Maps the engine's failures; `rejected` maps the aggregate's business rejection.
fn from_command<E: std::error::Error + Send + Sync + 'static>(
    error: CommandError<E>,
    rejected: impl FnOnce(E) -> ApiError,
) -> ApiError {
    match error {
        CommandError::Rejected(e) => rejected(e),
        CommandError::Contended { attempts } => ApiError::conflict(
            format!(
                "the aggregate kept changing underneath the command ({attempts} attempts); retry"
            ),
            "contended",
        ),
        CommandError::IdempotencyKeyReused => ApiError::conflict(
            "Idempotency-Key was already used for a different request",
            "idempotency_key_reused",
        ),
        CommandError::NonceReplayed => ApiError::from(AuthError::Replayed),
        CommandError::Unavailable(e) => ApiError::unavailable(&e),
        CommandError::Internal(e) => {
            let error: &(dyn std::error::Error + 'static) = e.as_ref();
            ApiError::internal(error)
        }
    }
}

impl From<CommandError<RunError>> for ApiError {
    fn from(error: CommandError<RunError>) -> Self {
        from_command(error, |e| {
            let details = json!({ "reason": e.reason() });
            match e {
                RunError::NotFound => ApiError::not_found("run not found").with_details(details),
                RunError::InvalidFrame(_) => ApiError::invalid(e.to_string()).with_details(details),
                _ => ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
                    .with_details(details),
            }
        })
    }
}

impl From<CommandError<WorkerError>> for ApiError {
    fn from(error: CommandError<WorkerError>) -> Self {
        from_command(error, |e| {
            let details = json!({ "reason": e.reason() });
            match e {
                WorkerError::NotFound => {
                    ApiError::not_found("worker not found").with_details(details)
                }
                WorkerError::NotOwner => {
                    ApiError::forbidden("worker does not belong to principal").with_details(details)
                }
                WorkerError::InvalidLease(_)
                | WorkerError::InvalidEvent(_)
                | WorkerError::InvalidRequest(_) => {
                    ApiError::invalid(e.to_string()).with_details(details)
                }
                _ => ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
                    .with_details(details),
            }
        })
    }
}

/// Fallback for unknown paths.
pub async fn not_found_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InvalidRequest,
        "method not allowed on this route",
    )
}

//! Getting into the console: one-time login codes and their exchange for an operator sync
//! token, and renewal of an operator token before it expires.
//!
//! `serve` on the embedded journal issues a code at start and prints
//! `http://ADDR/console#code=…`. The code travels in the URL *fragment* (never sent to a server,
//! never in access logs); the page posts it to `POST /console/api/login` and removes it from the
//! address bar. A code is 256 random bits, kept only as its SHA-256 in memory, single use and
//! valid for [`CODE_TTL`]; a restart forgets every code.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync_gateway::auth::mint::{mint_operator, MintError, MintRequest};
use sync_gateway::auth::AuthContext;

use super::error::ConsoleError;
use super::Console;

/// How long a login code stays redeemable.
pub const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// The subject of operator tokens the console mints.
pub const OPERATOR_SUBJECT: &str = "operator:console";
/// Lifetime asked for operator tokens (the mint clamps it into its 60–900 s window).
pub const OPERATOR_TOKEN_TTL_SECS: u64 = 900;
/// At most this many codes wait at once (older ones are dropped first).
const MAX_PENDING: usize = 16;

struct Pending {
    hash: [u8; 32],
    expires_at: Instant,
}

/// The outstanding login codes of this process. The std mutex is never held across an await.
#[derive(Default)]
pub struct LoginCodes {
    pending: Mutex<Vec<Pending>>,
}

fn hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

impl LoginCodes {
    /// A new code: 32 random bytes, base64url without padding.
    pub fn issue(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut pending = self.pending.lock().expect("login codes lock");
        let now = Instant::now();
        pending.retain(|p| p.expires_at > now);
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push(Pending {
            hash: hash(&code),
            expires_at: now + CODE_TTL,
        });
        code
    }

    /// Consumes `code`: true once for a code issued less than [`CODE_TTL`] ago, false for any
    /// other string (unknown, used, expired).
    pub fn redeem(&self, code: &str) -> bool {
        let presented = hash(code);
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("login codes lock");
        pending.retain(|p| p.expires_at > now);
        let found = pending
            .iter()
            .position(|p| bool::from(p.hash.ct_eq(&presented)));
        match found {
            Some(index) => {
                pending.remove(index);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    code: String,
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ConsoleError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ConsoleError::BadRequest {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "send Content-Type: application/json".into(),
        });
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ConsoleError::BadRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_request",
            message: e.to_string(),
        },
        _ => ConsoleError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            code: "malformed_json",
            message: e.to_string(),
        },
    })
}

/// Mints an operator token for every topic this node serves.
fn mint_for_console(console: &Console) -> Result<Response, ConsoleError> {
    let gateway = &console.lane.gateway;
    let request = MintRequest {
        subject: OPERATOR_SUBJECT.into(),
        scopes: gateway.known_topics().to_vec(),
        ttl_seconds: Some(OPERATOR_TOKEN_TTL_SECS),
        ..MintRequest::default()
    };
    let minted = mint_operator(
        gateway.verifier().config(),
        gateway.known_topics(),
        &request,
        gateway.verifier().now(),
    )
    .map_err(|e| match e {
        MintError::Unavailable => ConsoleError::MintUnavailable,
        other => {
            tracing::error!(error.message = %other, "console: operator token mint failed");
            ConsoleError::MintUnavailable
        }
    })?;
    let mut response = Json(minted).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /console/api/login` `{"code": "…"}`: redeems a login code for an operator sync token
/// (the `POST /api/sync/token` response shape). 401 `invalid_login_code` otherwise.
pub async fn exchange(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let request: LoginRequest = parse_json(&headers, &body)?;
    if !console.codes.redeem(request.code.trim()) {
        tracing::info!("console: refused a login code");
        return Err(ConsoleError::InvalidLoginCode);
    }
    tracing::info!("console: login code redeemed for an operator token");
    mint_for_console(&console)
}

/// The verified bearer token of `headers`.
pub(crate) fn verified(
    console: &Console,
    headers: &HeaderMap,
) -> Result<AuthContext, ConsoleError> {
    let token = sync_gateway::http::bearer(headers).ok_or(ConsoleError::Unauthorized {
        code: "unauthorized",
        message: "send Authorization: Bearer <sync token>".into(),
    })?;
    console
        .lane
        .gateway
        .verifier()
        .verify(token)
        .map_err(|e| ConsoleError::Unauthorized {
            code: match e.code() {
                sync_gateway::protocol::ErrorCode::ReauthRequired => "reauth_required",
                _ => "unauthorized",
            },
            message: e.to_string(),
        })
}

/// The verified operator token of `headers`.
pub(crate) fn operator(
    console: &Console,
    headers: &HeaderMap,
) -> Result<AuthContext, ConsoleError> {
    let auth = verified(console, headers)?;
    if !auth.principal.operator {
        return Err(ConsoleError::OperatorRequired);
    }
    Ok(auth)
}

/// `POST /console/api/renew` with a still-valid operator token: a fresh operator token. Tokens
/// of other principals are renewed by whoever minted them (403 `operator_required`).
pub async fn renew(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    operator(&console, &headers)?;
    mint_for_console(&console)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_redeemed_once_and_other_strings_never() {
        let codes = LoginCodes::default();
        let code = codes.issue();
        assert_eq!(code.len(), 43);
        assert!(!codes.redeem("not-the-code"));
        assert!(!codes.redeem(""));
        assert!(codes.redeem(&code));
        assert!(!codes.redeem(&code), "a code is single use");
    }

    #[test]
    fn an_expired_code_is_refused() {
        let codes = LoginCodes::default();
        let code = codes.issue();
        codes.pending.lock().unwrap()[0].expires_at = Instant::now() - Duration::from_secs(1);
        assert!(!codes.redeem(&code));
    }

    #[test]
    fn codes_are_distinct_and_bounded_in_number() {
        let codes = LoginCodes::default();
        let issued: Vec<String> = (0..MAX_PENDING + 4).map(|_| codes.issue()).collect();
        assert_eq!(codes.pending.lock().unwrap().len(), MAX_PENDING);
        assert!(!codes.redeem(&issued[0]), "the oldest codes were dropped");
        assert!(codes.redeem(&issued[MAX_PENDING + 3]));
        let unique: std::collections::HashSet<_> = issued.iter().collect();
        assert_eq!(unique.len(), issued.len());
    }
}

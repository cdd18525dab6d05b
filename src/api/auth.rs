//! Internal signature auth for `/internal/v1/*` and the caller's principal.
//!
//! [`require_signature`] (a route layer) verifies `X-OA-RUNTIME-SIGNATURE`, consumes its nonce
//! and checks the claims against what the request names (path `run_id`, query `thread_id`,
//! principal headers): missing/bad/expired/replayed tokens are `401`, contradictions `403`.
//! Handlers then take a [`Caller`]: the principal from `x-oa-user-id` / `x-oa-guest-scope`
//! (falling back to the token's claims), the tenant from `oa_org_id`, and the claims themselves
//! for checks that need the body (`thread_id` in a JSON body).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aggregates::ids::{GuestScope, OrgId, Owner, ThreadId, UserId};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engine::auth::{AuthError, InternalClaims, SIGNATURE_HEADER};
use engine::{CommandContext, IdempotencyRequest};
use serde_json::json;

use crate::api::error::ApiError;
use crate::api::extract::RequestMeta;
use crate::app::App;

/// Header naming the acting user.
pub const USER_HEADER: &str = "x-oa-user-id";
/// Header naming the acting guest scope.
pub const GUEST_HEADER: &str = "x-oa-guest-scope";

/// The verified claims of the request's token, put in the request extensions by
/// [`require_signature`].
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<InternalClaims>);

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    serde_urlencoded_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Minimal `application/x-www-form-urlencoded` pair parsing (percent-decoding, `+` as space).
fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi * 16 + lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn contradicts(claim: &Option<String>, requested: Option<&str>) -> bool {
    matches!((claim, requested), (Some(claim), Some(requested)) if claim != requested)
}

/// Route layer guarding `/internal/v1/*`.
pub async fn require_signature(
    State(app): State<App>,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let claims = match app.auth().authenticate(token, now_unix()).await {
        Ok(claims) => claims,
        Err(error) => return reject(error),
    };
    let path_run_id = params
        .iter()
        .find(|(name, _)| *name == "run_id")
        .map(|(_, value)| value.to_owned());
    let query_thread_id = query_param(request.uri().query(), "thread_id");
    let headers = request.headers();
    let checks = [
        ("run_id", &claims.run_id, path_run_id.as_deref()),
        ("thread_id", &claims.thread_id, query_thread_id.as_deref()),
        ("user_id", &claims.user_id, header(headers, USER_HEADER)),
        (
            "guest_scope",
            &claims.guest_scope,
            header(headers, GUEST_HEADER),
        ),
    ];
    for (claim, value, requested) in checks {
        if contradicts(value, requested) {
            return reject(AuthError::Forbidden { claim });
        }
    }
    request
        .extensions_mut()
        .insert(Authenticated(Arc::new(claims)));
    next.run(request).await
}

fn reject(error: AuthError) -> Response {
    metrics::counter!("runtime_auth_rejections_total", "reason" => error.reason()).increment(1);
    tracing::info!(reason = error.reason(), "internal auth rejected a request");
    ApiError::from(error).into_response()
}

/// Who is acting: a user, a guest scope, or (rarely) both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<UserId>,
    pub guest: Option<GuestScope>,
}

impl Principal {
    /// The owner recorded for aggregates this principal creates (the user when there is one).
    pub fn owner(&self) -> Owner {
        match (&self.user, &self.guest) {
            (Some(user), _) => Owner::User(user.clone()),
            (None, Some(guest)) => Owner::Guest(guest.clone()),
            (None, None) => unreachable!("a principal has a user or a guest scope"),
        }
    }

    /// Whether this principal may act on something owned by `owner`.
    pub fn owns(&self, owner: &Owner) -> bool {
        match owner {
            Owner::User(id) => self.user.as_ref() == Some(id),
            Owner::Guest(scope) => self.guest.as_ref() == Some(scope),
        }
    }

    /// `user:<id>` or `guest:<scope>`: the actor in event metadata and the idempotency scope.
    pub fn reference(&self) -> String {
        self.owner().reference()
    }
}

/// The authenticated caller of a `/internal/v1` command or query.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub org: Option<OrgId>,
    pub claims: Arc<InternalClaims>,
    pub meta: RequestMeta,
}

impl Caller {
    /// `403` if the token is bound to another thread than `thread_id`.
    pub fn check_thread(&self, thread_id: &ThreadId) -> Result<(), ApiError> {
        if contradicts(&self.claims.thread_id, Some(thread_id.as_str())) {
            return Err(AuthError::Forbidden { claim: "thread_id" }.into());
        }
        Ok(())
    }

    /// `403` if the caller's tenant and the recorded one are both known and differ.
    pub fn check_org(&self, recorded: Option<&OrgId>) -> Result<(), ApiError> {
        match (&self.org, recorded) {
            (Some(mine), Some(theirs)) if mine != theirs => Err(ApiError::forbidden(
                "resource belongs to another organisation",
            )
            .with_details(json!({ "reason": "org_mismatch" }))),
            _ => Ok(()),
        }
    }

    /// The engine context for a command from this caller.
    pub fn context(&self, idempotency: Option<IdempotencyRequest>) -> CommandContext {
        CommandContext {
            actor: self.principal.reference(),
            request_id: self.meta.request_id.clone(),
            trace_id: self.meta.trace_id.clone(),
            idempotency,
        }
    }
}

fn invalid_principal() -> ApiError {
    ApiError::unauthorized("missing or invalid principal headers")
        .with_details(json!({ "reason": "invalid_principal" }))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(Authenticated(claims)) = parts.extensions.get::<Authenticated>().cloned() else {
            // A route that takes a Caller but is not behind `require_signature`: a wiring bug.
            return Err(ApiError::unauthorized("request is not authenticated"));
        };
        let user = header(&parts.headers, USER_HEADER)
            .map(str::to_owned)
            .or_else(|| claims.user_id.clone());
        let guest = header(&parts.headers, GUEST_HEADER)
            .map(str::to_owned)
            .or_else(|| claims.guest_scope.clone());
        let user = user
            .map(UserId::parse)
            .transpose()
            .map_err(|_| invalid_principal())?;
        let guest = guest
            .map(GuestScope::parse)
            .transpose()
            .map_err(|_| invalid_principal())?;
        if user.is_none() && guest.is_none() {
            return Err(invalid_principal());
        }
        let org = claims
            .oa_org_id
            .clone()
            .map(OrgId::parse)
            .transpose()
            .map_err(|_| {
                ApiError::unauthorized("malformed signature token: invalid oa_org_id")
                    .with_details(json!({ "reason": "malformed_token" }))
            })?;
        Ok(Self {
            principal: Principal { user, guest },
            org,
            claims,
            meta: RequestMeta::from_headers(&parts.headers),
        })
    }
}

/// The request's token claims, for routes that need no principal (health).
impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("request is not authenticated"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_pairs_with_percent_encoding() {
        assert_eq!(
            query_param(Some("a=1&thread_id=t%3A1+x&z"), "thread_id").as_deref(),
            Some("t:1 x")
        );
        assert_eq!(
            query_param(Some("thread_id=%zz"), "thread_id").as_deref(),
            Some("%zz")
        );
        assert_eq!(query_param(None, "thread_id"), None);
    }

    #[test]
    fn a_principal_owns_what_its_user_or_guest_scope_owns() {
        let both = Principal {
            user: Some(UserId::parse("1").unwrap()),
            guest: Some(GuestScope::parse("g").unwrap()),
        };
        assert!(both.owns(&Owner::User(UserId::parse("1").unwrap())));
        assert!(both.owns(&Owner::Guest(GuestScope::parse("g").unwrap())));
        assert!(!both.owns(&Owner::User(UserId::parse("2").unwrap())));
        assert_eq!(both.reference(), "user:1");
    }
}

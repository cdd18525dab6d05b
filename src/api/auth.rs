//! Internal signature auth for `/internal/v1/*` and the caller's principal.
//!
//! [`require_signature`] (a route layer) verifies `X-OA-RUNTIME-SIGNATURE`, makes its nonce single
//! use (recorded up front, or — on the run and worker commands — in the command's own append, see
//! `nonce_rides_in_command`) and checks the claims against what the request names (path
//! `run_id`, query `thread_id`; a run- or thread-bound token only on run routes): missing/bad/expired/replayed tokens are `401`,
//! contradictions `403`. Handlers then take a [`Caller`]: the principal the token binds
//! (`engine::principal::resolve`: headers may only repeat it; without a claim exactly one
//! principal header), the tenant from `oa_org_id` (fails closed), and the claims themselves for
//! checks that need the body (`thread_id` in a JSON body).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aggregates::ids::{GuestScope, OrgId, Owner, ThreadId, UserId};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engine::auth::{AuthError, InternalClaims, NonceReservation, NonceTicket, SIGNATURE_HEADER};
use engine::principal::{self, PrincipalError};
use engine::{CommandContext, IdempotencyRequest};
use serde_json::json;

use crate::api::error::ApiError;
use crate::api::extract::RequestMeta;
use crate::app::App;

pub use engine::principal::{GUEST_HEADER, USER_HEADER};

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

/// Routes a token bound to a run or thread (`run_id` / `thread_id` claim) may use: the run routes
/// (where the claims are checked against the path, query and body) and the principal-free health
/// and OpenAPI routes. Any other route fails closed with `403 claim_mismatch`: a run-bound token
/// cannot register workers, mint sync tokens or revoke sessions.
fn run_scoped_token_allowed(route: &str) -> bool {
    route == "/internal/v1/runs"
        || route.starts_with("/internal/v1/runs/")
        || route == "/internal/v1/health"
        || route == "/internal/v1/openapi.json"
}

/// Whether a request's nonce is recorded by its command's own journal append rather than by a
/// write of its own before the handler runs: the `POST` routes of runs and workers, whose only
/// effect is engine commands issued with [`Caller::context`] (which carries the ticket). The
/// first append records the nonce in its transaction (one commit for both; a replayed token's
/// append fails on the nonce's key and writes nothing); a request that appends nothing records it
/// after the handler, before it is answered, and is answered `401 replayed_nonce` if it was
/// recorded before (it had no effect); so does a request refused before its handler. No read of
/// the nonce table precedes the handler. Every other route (reads and streams included, and
/// anything with an effect outside the engine) records it up front. A new `POST` route under these prefixes must keep that rule (docs/security.md).
fn nonce_rides_in_command(method: &Method, route: &str) -> bool {
    method == Method::POST
        && (route == "/internal/v1/runs"
            || route.starts_with("/internal/v1/runs/")
            || route == "/internal/v1/codex/workers"
            || route.starts_with("/internal/v1/codex/workers/"))
}

/// Route layer guarding `/internal/v1/*` (and the other routes the root puts behind it).
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
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let (claims, reservation) = if nonce_rides_in_command(request.method(), &route) {
        match app.auth().admit(token, now_unix()).await {
            Ok((claims, reservation)) => (claims, Some(reservation)),
            Err(error) => return reject(error),
        }
    } else {
        match app.auth().authenticate(token, now_unix()).await {
            Ok(claims) => (claims, None),
            Err(error) => return reject(error),
        }
    };
    let path_run_id = params
        .iter()
        .find(|(name, _)| *name == "run_id")
        .map(|(_, value)| value.to_owned());
    let query_thread_id = query_param(request.uri().query(), "thread_id");
    if let Err(error) = check_claims(
        &claims,
        &route,
        path_run_id.as_deref(),
        query_thread_id.as_deref(),
    ) {
        // A refused request spends its token like any other.
        return match reservation {
            Some(reservation) => settle(reservation, reject(error)).await,
            None => reject(error),
        };
    }
    let claims = Arc::new(claims);
    // Components outside this crate (the sync lane's mint and revoke) read the claims as is.
    request.extensions_mut().insert(claims.clone());
    request.extensions_mut().insert(Authenticated(claims));
    let Some(reservation) = reservation else {
        return next.run(request).await;
    };
    request.extensions_mut().insert(reservation.ticket());
    let response = next.run(request).await;
    settle(reservation, response).await
}

/// `403` when a claim contradicts what the request names, or a run- or thread-bound token is
/// used outside the run routes.
fn check_claims(
    claims: &InternalClaims,
    route: &str,
    path_run_id: Option<&str>,
    query_thread_id: Option<&str>,
) -> Result<(), AuthError> {
    let checks = [
        ("run_id", &claims.run_id, path_run_id),
        ("thread_id", &claims.thread_id, query_thread_id),
    ];
    for (claim, value, requested) in checks {
        if contradicts(value, requested) {
            return Err(AuthError::Forbidden { claim });
        }
    }
    if !run_scoped_token_allowed(route) {
        if claims.run_id.is_some() {
            return Err(AuthError::Forbidden { claim: "run_id" });
        }
        if claims.thread_id.is_some() {
            return Err(AuthError::Forbidden { claim: "thread_id" });
        }
    }
    Ok(())
}

/// Records a deferred nonce before the response leaves (see [`nonce_rides_in_command`]).
async fn settle(reservation: NonceReservation, response: Response) -> Response {
    match reservation.settle(now_unix()).await {
        Ok(()) => response,
        Err(error) => reject(error),
    }
}

fn reject(error: AuthError) -> Response {
    metrics::counter!("runtime_auth_rejections_total", "reason" => error.reason()).increment(1);
    tracing::info!(reason = error.reason(), "internal auth rejected a request");
    ApiError::from(error).into_response()
}

/// Who is acting: exactly one user or guest scope (docs/security.md), and whether the token is
/// the operator's (which reaches every principal's resources).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    owner: Owner,
    operator: bool,
}

impl Principal {
    /// A non-operator principal acting for `owner`.
    pub fn new(owner: Owner) -> Self {
        Self {
            owner,
            operator: false,
        }
    }

    /// The owner recorded for aggregates this principal creates.
    pub fn owner(&self) -> Owner {
        self.owner.clone()
    }

    /// The user, when the principal is one.
    pub fn user(&self) -> Option<&UserId> {
        self.owner.user_id()
    }

    /// The guest scope, when the principal is one.
    pub fn guest(&self) -> Option<&GuestScope> {
        self.owner.guest_scope()
    }

    /// Whether the token is the operator's.
    pub fn is_operator(&self) -> bool {
        self.operator
    }

    /// Whether this principal may act on something owned by `owner`: the same user or the same
    /// guest scope (a user id and a guest scope with the same text are different principals), or
    /// any owner for the operator.
    pub fn owns(&self, owner: &Owner) -> bool {
        principal::owns(self.operator, &self.owner, owner)
    }

    /// `user:<id>` or `guest:<scope>`: the actor in event metadata and the idempotency scope.
    pub fn reference(&self) -> String {
        self.owner.reference()
    }
}

/// The authenticated caller of a `/internal/v1` command or query.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub org: Option<OrgId>,
    pub claims: Arc<InternalClaims>,
    pub meta: RequestMeta,
    /// The token's nonce when it rides in this request's command (see `require_signature`).
    pub nonce: Option<Arc<NonceTicket>>,
}

impl Caller {
    /// `403` if the token is bound to another thread than `thread_id`.
    pub fn check_thread(&self, thread_id: &ThreadId) -> Result<(), ApiError> {
        if contradicts(&self.claims.thread_id, Some(thread_id.as_str())) {
            return Err(AuthError::Forbidden { claim: "thread_id" }.into());
        }
        Ok(())
    }

    /// `403 org_mismatch` unless the caller's tenant is the recorded one. Tenancy fails closed: a
    /// resource recorded under an org needs that org's claim, and an org claim reaches only that
    /// org's resources (not org-less ones). The operator reaches every org.
    pub fn check_org(&self, recorded: Option<&OrgId>) -> Result<(), ApiError> {
        if principal::in_tenant(self.principal.operator, self.org.as_ref(), recorded) {
            return Ok(());
        }
        Err(
            ApiError::forbidden("resource belongs to another organisation")
                .with_details(json!({ "reason": "org_mismatch" })),
        )
    }

    /// Whether the caller may see a resource of `owner` in `org` (lists filter with it).
    pub fn may_see(&self, owner: Option<&Owner>, org: Option<&OrgId>) -> bool {
        owner.is_some_and(|o| self.principal.owns(o)) && self.check_org(org).is_ok()
    }

    /// The engine context for a command from this caller.
    pub fn context(&self, idempotency: Option<IdempotencyRequest>) -> CommandContext {
        CommandContext {
            actor: self.principal.reference(),
            request_id: self.meta.request_id.clone(),
            trace_id: self.meta.trace_id.clone(),
            idempotency,
            nonce: self.nonce.clone(),
        }
    }
}

fn principal_error(error: PrincipalError) -> ApiError {
    let details = match &error {
        PrincipalError::Mismatch { claim } => json!({ "reason": error.reason(), "claim": claim }),
        _ => json!({ "reason": error.reason() }),
    };
    match error {
        PrincipalError::Ambiguous => ApiError::invalid(error.to_string()),
        PrincipalError::Mismatch { .. } => ApiError::forbidden(error.to_string()),
        PrincipalError::Missing | PrincipalError::MalformedToken(_) => {
            ApiError::unauthorized(error.to_string())
        }
    }
    .with_details(details)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(Authenticated(claims)) = parts.extensions.get::<Authenticated>().cloned() else {
            // A route that takes a Caller but is not behind `require_signature`: a wiring bug.
            return Err(ApiError::unauthorized("request is not authenticated"));
        };
        let resolved = principal::resolve(
            &claims,
            header(&parts.headers, USER_HEADER),
            header(&parts.headers, GUEST_HEADER),
        )
        .map_err(principal_error)?;
        // An operator token must still name whom a run or worker route acts for.
        let owner = resolved
            .owner
            .ok_or_else(|| principal_error(PrincipalError::Missing))?;
        Ok(Self {
            principal: Principal {
                owner,
                operator: resolved.operator,
            },
            org: resolved.org,
            claims,
            meta: RequestMeta::from_headers(&parts.headers),
            nonce: parts.extensions.get::<Arc<NonceTicket>>().cloned(),
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
    fn a_principal_owns_only_its_own_user_or_guest_scope() {
        let user = Principal::new(Owner::User(UserId::parse("1").unwrap()));
        assert!(user.owns(&Owner::User(UserId::parse("1").unwrap())));
        assert!(!user.owns(&Owner::Guest(GuestScope::parse("1").unwrap())));
        assert!(!user.owns(&Owner::User(UserId::parse("2").unwrap())));
        assert_eq!(user.reference(), "user:1");
        let operator = Principal {
            operator: true,
            ..user
        };
        assert!(operator.owns(&Owner::User(UserId::parse("2").unwrap())));
    }
}

//! HTTP handlers: hydration (`GET /sync/v1/topics/{topic}/docs`, authorised by the sync
//! token), token minting (`POST /api/sync/token`) and session revocation
//! (`POST /internal/v1/sync/sessions/revoke`). Errors are `{"error": {"code", "message"}}`.

use axum::body::Bytes;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use engine::auth::InternalClaims;
use engine::principal::{self, PrincipalError, RequestPrincipal, GUEST_HEADER, USER_HEADER};

use crate::auth::mint::{mint, MintError, MintRequest};
use crate::auth::owners::credential_owner;
use crate::auth::revocation::Revocation;
use crate::auth::{AuthError, RevocationKind};
use crate::gateway::Gateway;
use crate::protocol::ErrorCode;
use crate::source::{HydratePage, SourceError};

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

    pub fn with(mut self, key: &str, value: Value) -> Self {
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

/// Documents per hydration page when the request names no `limit`.
pub const DEFAULT_HYDRATE_LIMIT: usize = 500;
/// The largest `limit` a hydration page accepts: what one response may hold in memory.
pub const MAX_HYDRATE_LIMIT: usize = 1000;

/// `GET /sync/v1/topics/{topic}/docs` query. Pages are read in key order: the first page names
/// no `after`; each next page passes the previous page's `next_after` as `after` and the first
/// page's `watermark`, which every page of one hydration reports (the watermark to subscribe
/// from: documents on later pages may be newer than it, and replay from it re-delivers them at
/// their versions, which a client applying by `doc_version` ignores).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydrateQuery {
    pub doc_key: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
    pub watermark: Option<u64>,
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
    /// Present when more documents follow: pass it as `after` (with `watermark`) for the next
    /// page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[utoipa::path(get, path = HYDRATE_PATH, tag = "sync",
    params(
        ("topic" = String, Path, description = "A sync topic, e.g. `runtime.run_summaries`"),
        ("doc_key" = Option<String>, Query, description = "Only this document"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Documents per page, 1–1000 (default 500)"),
        ("after" = Option<String>, Query, description = "The previous page's `next_after` (with `watermark`)"),
        ("watermark" = Option<u64>, Query, description = "The first page's watermark (with `after`)")),
    security(("sync_token" = [])),
    responses(
        (status = 200, description = "`{topic, watermark, docs, next_after?}`: one page of the principal's documents and the watermark to subscribe from (docs/khala-protocol.md)", content_type = "application/json", body = Object),
        (status = 400, description = "`invalid_request` (paging) or `invalid_cursor`", body = Object),
        (status = 401, description = "`unauthorized` or `reauth_required`", body = Object),
        (status = 403, description = "`forbidden_topic`", body = Object),
        (status = 404, description = "`bad_topic`", body = Object),
        (status = 503, description = "`replica_unavailable` (the read replica is down), `replica_behind` (it has not replayed `watermark` yet) or `internal`; retry with backoff", body = Object)))]
pub async fn hydrate(
    State(gateway): State<Gateway>,
    Path(topic): Path<String>,
    query: Result<Query<HydrateQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<HydrateResponse>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    let invalid =
        |message: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
    let limit = query.limit.unwrap_or(DEFAULT_HYDRATE_LIMIT);
    if !(1..=MAX_HYDRATE_LIMIT).contains(&limit) {
        return Err(invalid(&format!(
            "limit must be between 1 and {MAX_HYDRATE_LIMIT}"
        )));
    }
    if query.after.is_some() != query.watermark.is_some() {
        return Err(invalid(
            "a next page names both `after` (the previous page's next_after) and `watermark` \
             (the first page's)",
        ));
    }
    let token = bearer(&headers).ok_or_else(|| auth_error(&AuthError::Missing))?;
    let auth = gateway
        .verifier()
        .verify(token)
        .map_err(|e| auth_error(&e))?;
    note_credentials(&gateway, &auth).await;
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
    let page = HydratePage {
        after: query.after.as_deref(),
        limit,
    };
    let filter = auth.principal.owner_filter();
    let hydration = hydrate_page(
        &gateway,
        &topic,
        query.doc_key.as_deref(),
        page,
        &filter,
        query.watermark,
    )
    .await?;
    let watermark = query.watermark.unwrap_or(hydration.watermark);
    Ok(Json(HydrateResponse {
        topic: hydration.topic,
        watermark,
        next_after: hydration.next_after,
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

/// One hydration page. A next page names the first page's watermark, and its documents must be
/// at least as new: a source behind that watermark (a replica that has not replayed it) is
/// read again for up to `replica_wait` while the primary shows the watermark was written, then
/// answered `503 replica_behind`; a watermark the primary never reached is `invalid_cursor`.
async fn hydrate_page(
    gateway: &Gateway,
    topic: &str,
    doc_key: Option<&str>,
    page: HydratePage<'_>,
    filter: &crate::source::OwnerFilter,
    first: Option<u64>,
) -> Result<crate::source::Hydration, ApiError> {
    let source = gateway.source();
    let deadline = tokio::time::Instant::now() + gateway.config().replica_wait;
    let mut pause = engine::backoff::Backoff::new(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(100),
    );
    loop {
        let hydration = source
            .hydrate(topic, doc_key, page, filter)
            .await
            .map_err(|e| source_error(&e))?;
        let Some(first) = first.filter(|first| *first > hydration.watermark) else {
            return Ok(hydration);
        };
        let primary = source
            .primary_heads(&[topic])
            .await
            .map_err(|e| source_error(&e))?
            .and_then(|heads| heads.first().copied());
        match primary {
            Some(head) if first <= head => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "replica_behind",
                        format!(
                            "the read replica has replayed {topic} up to {}, not yet to \
                             watermark {first}; retry",
                            hydration.watermark
                        ),
                    )
                    .with("replica_watermark", json!(hydration.watermark))
                    .with("retry_after_ms", json!(500)));
                }
                tokio::time::sleep(pause.next_delay()).await;
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    format!(
                        "watermark {first} is ahead of the topic's head {}: pass the first \
                         page's watermark",
                        hydration.watermark
                    ),
                ))
            }
        }
    }
}

/// A hydration's source failure: `503 replica_unavailable` when the read replica is down,
/// `503 internal` otherwise.
fn source_error(e: &SourceError) -> ApiError {
    if let SourceError::ReplicaUnavailable(_) = e {
        tracing::warn!(error.message = %e, "hydration: read replica unavailable");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replica_unavailable",
            "the read replica is unavailable; retry with backoff",
        )
        .with("retry_after_ms", json!(1000));
    }
    tracing::error!(error.message = %e, error.cause_chain = ?e, "hydration failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "internal",
        "sync source unavailable; retry with backoff",
    )
}

/// The internal token's principal for the mint and revoke routes, which the root mounts behind
/// its signature auth (that layer puts the verified claims in the request extensions). Without
/// claims the route was mounted unguarded: refuse rather than act for nobody.
fn internal_principal(
    claims: Option<&InternalClaims>,
    headers: &HeaderMap,
) -> Result<RequestPrincipal, ApiError> {
    let claims = claims.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs an X-OA-RUNTIME-SIGNATURE token",
        )
    })?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    principal::resolve(claims, header(USER_HEADER), header(GUEST_HEADER)).map_err(|e| {
        let status = match e {
            PrincipalError::Ambiguous => StatusCode::BAD_REQUEST,
            PrincipalError::Mismatch { .. } => StatusCode::FORBIDDEN,
            PrincipalError::Missing | PrincipalError::MalformedToken(_) => StatusCode::UNAUTHORIZED,
        };
        let code = match status {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "unauthorized",
        };
        ApiError::new(status, code, e.to_string()).with("details", json!({ "reason": e.reason() }))
    })
}

/// Records, on first sight, who owns the credential ids a verified sync token names (so a
/// principal can revoke sessions the control plane minted without the runtime). A registry
/// failure is logged, not turned into a refused read: reads do not depend on it, and revoking
/// an unrecorded id stays possible for the operator.
pub(crate) async fn note_credentials(gateway: &Gateway, auth: &crate::auth::AuthContext) {
    let now_ms = gateway.verifier().now().saturating_mul(1000);
    let until_ms = auth.expires_at.saturating_mul(1000);
    if let Err(e) = gateway
        .verifier()
        .revocations()
        .owners()
        .note_seen(auth, now_ms, until_ms)
        .await
    {
        tracing::warn!(error.message = %e, "recording credential owners on sight failed");
    }
}

fn forbidden(reason: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
        .with("details", json!({ "reason": reason }))
}

fn store_unavailable(e: impl std::error::Error) -> ApiError {
    tracing::error!(error.message = %e, "credential owner store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "internal",
        "credential store unavailable; retry",
    )
}

/// `POST /api/sync/token`: mints only for the internal token's own principal and org, with scopes
/// inside its `oa_sync_scopes` when present; the operator mints for anyone, and each such mint
/// is recorded through the operator log (the journal under `serve`). Session and device ids are bound to the subject they
/// are first minted for (docs/security.md).
#[utoipa::path(post, path = MINT_PATH, tag = "sync",
    request_body(content = crate::auth::mint::MintRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The control plane's token response (`token`, `token_type`, `expires_in`, … `scopes`)", content_type = "application/json", body = Object),
        (status = 400, description = "`malformed_json` or `invalid_request`", body = Object),
        (status = 401, description = "no or a refused internal token", body = Object),
        (status = 403, description = "`forbidden`: another principal, org or scope, or a credential id another principal owns", body = Object),
        (status = 415, description = "`unsupported_media_type`", body = Object),
        (status = 422, description = "`invalid_request` or `invalid_scope`", body = Object),
        (status = 503, description = "`sync_token_unavailable` or the owner registry failed", body = Object)))]
pub async fn mint_token(
    State(gateway): State<Gateway>,
    claims: Option<Extension<Arc<InternalClaims>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let claims = claims.map(|Extension(c)| c);
    let caller = internal_principal(claims.as_deref(), &headers)?;
    let mut request: MintRequest = parse_body(&headers, &body)?;
    let subject = request.subject.trim().to_owned();
    let for_self = caller
        .owner
        .as_ref()
        .is_some_and(|owner| owner.reference() == subject);
    let caller_org = caller.org.as_ref().map(|o| o.as_str().to_owned());
    if !caller.operator {
        if !for_self {
            return Err(forbidden(
                "subject_mismatch",
                "a token mints sync tokens only for its own principal",
            ));
        }
        match (&request.org_id, &caller_org) {
            (None, _) => request.org_id = caller_org.clone(),
            (Some(asked), Some(mine)) if asked == mine => {}
            _ => {
                return Err(forbidden(
                    "org_mismatch",
                    "a token mints sync tokens only for its own org",
                ))
            }
        }
        if let Some(granted) = claims.as_deref().and_then(|c| c.oa_sync_scopes.as_ref()) {
            let outside: Vec<&String> = request
                .scopes
                .iter()
                .filter(|s| !granted.iter().any(|g| g == s.trim()))
                .collect();
            if !outside.is_empty() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "scopes must be inside the token's oa_sync_scopes",
                )
                .with(
                    "details",
                    json!({ "reason": "scope_not_granted", "forbidden_scopes": outside }),
                ));
            }
        }
    }
    let verifier = gateway.verifier();
    let now = verifier.now();
    let config = verifier.config();
    let now_ms = now.saturating_mul(1000);
    // A session or device stays bound while a token naming it may still be accepted.
    let keep_ms =
        i64::try_from((config.max_token_age + config.leeway * 2).as_millis()).unwrap_or(i64::MAX);
    let owners = verifier.revocations().owners();
    let owner = credential_owner(&subject, request.org_id.as_deref());
    for (kind, id) in [
        (RevocationKind::Session, &request.session_id),
        (RevocationKind::Device, &request.device_id),
    ] {
        let Some(id) = id.as_deref() else { continue };
        let holder = owners
            .claim(kind, id, &owner, now_ms, now_ms.saturating_add(keep_ms))
            .await
            .map_err(store_unavailable)?;
        if holder != owner {
            return Err(forbidden(
                "credential_not_owned",
                format!("that {kind} id belongs to another principal"),
            ));
        }
    }
    let minted = match mint(config, gateway.known_topics(), &request, now) {
        Ok(minted) => minted,
        Err(MintError::InvalidScope(unknown)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_scope",
                "scopes must name known sync topics",
            )
            .with("invalid_scopes", json!(unknown)))
        }
        Err(MintError::InvalidRequest(message)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                message,
            ))
        }
        Err(MintError::Unavailable) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sync_token_unavailable",
                "no sync token signing key is configured",
            ))
        }
    };
    if let Some(jti) = &minted.jti {
        let expires = minted
            .expires_at_unix
            .saturating_add(i64::try_from(config.leeway.as_secs()).unwrap_or(0))
            .saturating_mul(1000);
        owners
            .claim(RevocationKind::Jti, jti, &owner, now_ms, expires)
            .await
            .map_err(store_unavailable)?;
    }
    if caller.operator && !(for_self && request.org_id == caller_org) {
        let detail = json!({ "org_id": request.org_id, "scopes": minted.scopes }).to_string();
        owners
            .record_operator_action(now_ms, "mint", &caller.reference(), &subject, &detail)
            .await
            .map_err(store_unavailable)?;
        tracing::info!(actor = %caller.reference(), subject = %subject, "operator minted a sync token for another principal");
    }
    Ok((StatusCode::OK, Json(minted)).into_response())
}

/// `POST /internal/v1/sync/sessions/revoke`: at least one of the ids, and a non-blank reason.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = REVOKE_PATH, tag = "sync",
    request_body(content = RevokeRequest, content_type = "application/json",
        description = "At least one id; `reason` must not be blank (else `422`)"),
    responses(
        (status = 200, description = "`{revoked: [...]}`", content_type = "application/json", body = Object),
        (status = 400, description = "`malformed_json` or `invalid_request`", body = Object),
        (status = 401, description = "no or a refused internal token", body = Object),
        (status = 403, description = "`forbidden` (`not_owner`)", body = Object),
        (status = 415, description = "`unsupported_media_type`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "the revocation store failed", body = Object)))]
pub async fn revoke(
    State(gateway): State<Gateway>,
    claims: Option<Extension<Arc<InternalClaims>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RevokeResponse>, ApiError> {
    let claims = claims.map(|Extension(c)| c);
    let caller = internal_principal(claims.as_deref(), &headers)?;
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
    // Every target is checked before anything is revoked: all or nothing.
    let now_ms = gateway.verifier().now().saturating_mul(1000);
    let owners = gateway.verifier().revocations().owners();
    let mut for_others = Vec::new();
    for (kind, id) in &targets {
        let owner = owners
            .owner_of(*kind, id, now_ms)
            .await
            .map_err(store_unavailable)?;
        let mine = caller.owner.as_ref().is_some_and(|o| {
            let me = credential_owner(&o.reference(), caller.org.as_ref().map(|o| o.as_str()));
            owner.as_deref() == Some(me.as_str())
        });
        if !mine {
            if !caller.operator {
                // Unknown and someone else's look the same: no probing of other principals' ids.
                return Err(forbidden(
                    "not_owner",
                    format!("that {kind} id does not belong to the caller"),
                ));
            }
            for_others.push((*kind, id.clone(), owner));
        }
    }
    for (kind, id, owner) in for_others {
        let detail = json!({ "kind": kind.as_str(), "id": id, "reason": reason }).to_string();
        owners
            .record_operator_action(
                now_ms,
                "revoke",
                &caller.reference(),
                owner.as_deref().unwrap_or("unknown"),
                &detail,
            )
            .await
            .map_err(store_unavailable)?;
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

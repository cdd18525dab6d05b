//! Minting sync tokens with the control plane's claims and response shape, for deployments
//! without a separate control plane (`POST /api/sync/token`) and for operators (`token mint`).

use chrono::{DateTime, SecondsFormat, Utc};
use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};

use super::{Audience, AuthConfig, Scopes, SyncClaims, CLAIMS_VERSION};

/// What to mint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// `user:<id>` or a guest principal (`guest:<scope>`).
    pub subject: String,
    /// Topics the token may read.
    pub scopes: Vec<String>,
    /// Lifetime in seconds; default 300, clamped into 60–900.
    #[serde(default, deserialize_with = "aggregates::number::opt_whole_u64")]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
}

/// The control plane's token response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedToken {
    pub token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub issued_at: String,
    pub expires_at: String,
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub org_id: Option<String>,
    pub claims_version: String,
    pub scopes: Vec<String>,
    /// The token's `jti` (not part of the control plane's response shape).
    #[serde(skip)]
    pub jti: Option<String>,
    /// `exp` in Unix seconds (not part of the response shape).
    #[serde(skip)]
    pub expires_at_unix: i64,
}

/// Why a token cannot be minted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    /// 422 `invalid_scope`.
    #[error("unknown or empty scopes: {0:?}")]
    InvalidScope(Vec<String>),
    /// 422 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// 503 `sync_token_unavailable`: no signing key is configured.
    #[error("no sync token signing key is configured")]
    Unavailable,
}

fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Mints a token for `request` at `now` (unix seconds). `known_topics` bounds the scopes.
///
/// # Errors
/// [`MintError`] as documented on its variants.
pub fn mint(
    config: &AuthConfig,
    known_topics: &[String],
    request: &MintRequest,
    now: i64,
) -> Result<MintedToken, MintError> {
    mint_as(config, known_topics, request, None, now)
}

/// Mints a token of the operator principal (`oa_role = "operator"`: it reads every principal's
/// documents) for `request` at `now`. Only in-process callers reach this (the console's login
/// code exchange); `POST /api/sync/token` never mints an operator token.
///
/// # Errors
/// [`MintError`] as documented on its variants.
pub fn mint_operator(
    config: &AuthConfig,
    known_topics: &[String],
    request: &MintRequest,
    now: i64,
) -> Result<MintedToken, MintError> {
    mint_as(
        config,
        known_topics,
        request,
        Some(engine::auth::OPERATOR_ROLE),
        now,
    )
}

fn mint_as(
    config: &AuthConfig,
    known_topics: &[String],
    request: &MintRequest,
    role: Option<&str>,
    now: i64,
) -> Result<MintedToken, MintError> {
    let subject = request.subject.trim();
    if subject.is_empty() {
        return Err(MintError::InvalidRequest(
            "subject must not be empty".into(),
        ));
    }
    // An empty org, device or session would read back as absent (the claims decode "" as no
    // value): refuse it rather than mint a token whose claims mean something else.
    for (field, value) in [
        ("org_id", &request.org_id),
        ("device_id", &request.device_id),
        ("session_id", &request.session_id),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(MintError::InvalidRequest(format!(
                "{field} must not be empty when given"
            )));
        }
    }
    let mut scopes: Vec<String> = Vec::new();
    for scope in &request.scopes {
        let scope = scope.trim().to_owned();
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let unknown: Vec<String> = scopes
        .iter()
        .filter(|s| !known_topics.contains(s))
        .cloned()
        .collect();
    if scopes.is_empty() || !unknown.is_empty() {
        return Err(MintError::InvalidScope(unknown));
    }
    let signing = config.keys.signing_key().ok_or(MintError::Unavailable)?;
    let ttl = request
        .ttl_seconds
        .unwrap_or(config.default_ttl.as_secs())
        .clamp(config.min_ttl.as_secs(), config.max_ttl.as_secs());
    let exp = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    let jti = uuid::Uuid::now_v7().to_string();
    let claims = SyncClaims {
        iss: Some(config.issuer.clone()),
        aud: Some(Audience::One(config.audience.clone())),
        sub: Some(subject.to_owned()),
        iat: Some(now),
        nbf: Some(now),
        exp: Some(exp),
        jti: Some(jti.clone()),
        oa_user_id: subject.strip_prefix("user:").map(str::to_owned),
        oa_org_id: request.org_id.clone(),
        oa_device_id: request.device_id.clone(),
        oa_session_id: request.session_id.clone(),
        sid: None,
        oa_guest_scope: subject.strip_prefix("guest:").map(str::to_owned),
        oa_sync_scopes: Scopes(scopes.clone()),
        oa_sync_topics: None,
        oa_claims_version: Some(CLAIMS_VERSION.into()),
        oa_role: role.map(str::to_owned),
    };
    let mut header = Header::new(signing.algorithm);
    header.kid = Some(signing.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &signing.key)
        .map_err(|e| MintError::InvalidRequest(format!("cannot sign token: {e}")))?;
    Ok(MintedToken {
        token,
        token_type: "Bearer".into(),
        expires_in: ttl,
        issued_at: rfc3339(now),
        expires_at: rfc3339(exp),
        issuer: config.issuer.clone(),
        audience: config.audience.clone(),
        subject: subject.to_owned(),
        org_id: request.org_id.clone(),
        claims_version: CLAIMS_VERSION.into(),
        scopes,
        jti: Some(jti),
        expires_at_unix: exp,
    })
}

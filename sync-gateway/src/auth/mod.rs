//! Sync tokens: the control plane's JWTs, verified unchanged (signature by `kid`, `iss`, `aud`,
//! `exp`/`nbf`/`iat` with leeway, maximum age, `jti` and session/device revocation), the
//! principal and scopes they grant, and minting with the control plane's response shape.
//!
//! - [`keys`]: HS256 keys by `kid`, EdDSA / RS256 public keys, the signing key.
//! - [`mint`]: minting tokens (`POST /api/sync/token`, `token mint`).
//! - [`revocation`]: the durable revocation list shared by every node.
//! - [`owners`]: who owns each session, device and token id (revocation is owner-only).

pub mod keys;
pub mod mint;
pub mod owners;
pub mod revocation;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use engine::clock::{Clock, SystemClock};
use jsonwebtoken::Validation;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::protocol::ErrorCode;
use crate::source::OwnerFilter;
pub use keys::{KeyError, KeySet};
pub use revocation::{RevocationKind, Revocations};

/// Default `iss` of the control plane's tokens.
pub const DEFAULT_ISSUER: &str = "https://openagents.com";
/// Default `aud` of sync tokens.
pub const DEFAULT_AUDIENCE: &str = "openagents-sync";
/// `oa_claims_version` of tokens this runtime mints.
pub const CLAIMS_VERSION: &str = "oa_sync_claims_v1";

/// How tokens are checked and minted.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub keys: KeySet,
    pub issuer: String,
    pub audience: String,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Tokens whose `iat` is older than this are refused, whatever their `exp`.
    pub max_token_age: Duration,
    /// Minting TTL: default and the allowed range (requests are clamped into it).
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl AuthConfig {
    pub fn new(keys: KeySet) -> Self {
        Self {
            keys,
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            leeway: Duration::from_secs(30),
            max_token_age: Duration::from_secs(3600),
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(900),
        }
    }
}

/// A list of scopes, written as a JSON list or a comma-separated string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Scopes(pub Vec<String>);

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        let items = match Raw::deserialize(d)? {
            Raw::List(items) => items,
            Raw::Text(text) => text.split(',').map(str::to_owned).collect(),
        };
        let mut out: Vec<String> = Vec::new();
        for item in items {
            let item = item.trim();
            if !item.is_empty() && !out.iter().any(|s| s == item) {
                out.push(item.to_owned());
            }
        }
        Ok(Scopes(out))
    }
}

/// `aud` as a string or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a string or number, got {other}"
            )))
        }
    })
}

/// The claims of a sync token, as the control plane mints them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub oa_user_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub oa_org_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub oa_device_id: Option<String>,
    /// The login session the token belongs to (revocable); `sid` is accepted too.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub oa_session_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sid: Option<String>,
    /// A guest principal's scope (also derived from `sub = "guest:<scope>"`).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub oa_guest_scope: Option<String>,
    #[serde(default)]
    pub oa_sync_scopes: Scopes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oa_sync_topics: Option<Scopes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oa_claims_version: Option<Value>,
    /// `"operator"` (engine::auth::OPERATOR_ROLE): the operator principal, which reads every
    /// principal's documents. Any other value is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oa_role: Option<String>,
}

/// Who a token speaks for, as the ownership filter sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Principal {
    pub user_id: Option<String>,
    pub guest_scope: Option<String>,
    pub org_id: Option<String>,
    /// The operator principal (`oa_role = "operator"`): reads every principal's documents.
    pub operator: bool,
}

impl Principal {
    pub fn owner_filter(&self) -> OwnerFilter {
        if self.operator {
            return OwnerFilter::Any;
        }
        OwnerFilter::Principal {
            user_id: self.user_id.clone(),
            guest_scope: self.guest_scope.clone(),
            org_id: self.org_id.clone(),
        }
    }
}

/// A verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthContext {
    pub subject: String,
    pub principal: Principal,
    pub device_id: Option<String>,
    pub session_id: Option<String>,
    pub jti: Option<String>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub scopes: Vec<String>,
    /// `oa_sync_topics`, when present, narrows the scopes further.
    pub topics: Option<Vec<String>>,
}

impl AuthContext {
    /// Whether the token grants `topic` (scope check only; the caller checks that the topic is known).
    pub fn grants(&self, topic: &str) -> bool {
        self.scopes.iter().any(|s| s == topic)
            && self
                .topics
                .as_ref()
                .is_none_or(|topics| topics.iter().any(|t| t == topic))
    }

    /// The known topics this token may read, in the token's scope order.
    pub fn allowed_topics(&self, known: &[String]) -> Vec<String> {
        self.scopes
            .iter()
            .filter(|s| known.contains(s) && self.grants(s))
            .cloned()
            .collect()
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("sync token missing")]
    Missing,
    #[error("sync token malformed: {0}")]
    Malformed(String),
    #[error("sync token signed with unknown key {0:?}")]
    UnknownKey(Option<String>),
    #[error("sync token signature or algorithm invalid")]
    BadSignature,
    #[error("sync token expired")]
    Expired,
    #[error("sync token not valid yet")]
    NotYetValid,
    #[error("sync token issuer not accepted")]
    WrongIssuer,
    #[error("sync token audience not accepted")]
    WrongAudience,
    #[error("sync token older than the maximum token age")]
    TooOld,
    #[error("sync token {0} revoked")]
    Revoked(RevocationKind),
}

impl AuthError {
    /// The client-facing code: revoked sessions and devices need a fresh login
    /// (`reauth_required`); anything else needs a fresh token (`unauthorized`).
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Revoked(RevocationKind::Session | RevocationKind::Device) => {
                ErrorCode::ReauthRequired
            }
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// Verifies sync tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    config: Arc<AuthConfig>,
    revocations: Revocations,
    clock: Arc<dyn Clock>,
}

impl Verifier {
    pub fn new(config: AuthConfig, revocations: Revocations) -> Self {
        Self::with_clock(config, revocations, Arc::new(SystemClock::default()))
    }

    pub fn with_clock(config: AuthConfig, revocations: Revocations, clock: Arc<dyn Clock>) -> Self {
        Self {
            config: Arc::new(config),
            revocations,
            clock,
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        self.clock.now().unix_micros().div_euclid(1_000_000)
    }

    /// Verifies `token`.
    ///
    /// # Errors
    /// [`AuthError`] naming the first check that failed.
    pub fn verify(&self, token: &str) -> Result<AuthContext, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = self
            .config
            .keys
            .verify_key(header.kid.as_deref())
            .ok_or_else(|| AuthError::UnknownKey(header.kid.clone()))?;
        let mut validation = Validation::new(key.algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let data =
            jsonwebtoken::decode::<SyncClaims>(token, &key.key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        AuthError::BadSignature
                    }
                    _ => AuthError::Malformed(e.to_string()),
                }
            })?;
        let claims = data.claims;
        self.check_claims(&claims)?;
        let context = context_from(claims)?;
        if let Some(kind) = self.revocations.revoked(&context) {
            return Err(AuthError::Revoked(kind));
        }
        Ok(context)
    }

    fn check_claims(&self, claims: &SyncClaims) -> Result<(), AuthError> {
        let now = self.now();
        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
        let exp = claims
            .exp
            .ok_or_else(|| AuthError::Malformed("exp claim missing".into()))?;
        if now > exp.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        let iat = claims
            .iat
            .ok_or_else(|| AuthError::Malformed("iat claim missing".into()))?;
        if iat > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid);
        }
        let max_age = i64::try_from(self.config.max_token_age.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(iat) > max_age.saturating_add(leeway) {
            return Err(AuthError::TooOld);
        }
        if claims.iss.as_deref() != Some(self.config.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        if !claims
            .aud
            .as_ref()
            .is_some_and(|aud| aud.contains(&self.config.audience))
        {
            return Err(AuthError::WrongAudience);
        }
        Ok(())
    }
}

fn context_from(claims: SyncClaims) -> Result<AuthContext, AuthError> {
    let subject = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::Malformed("sub claim missing".into()))?;
    let user_id = claims
        .oa_user_id
        .or_else(|| subject.strip_prefix("user:").map(str::to_owned));
    let guest_scope = claims
        .oa_guest_scope
        .or_else(|| subject.strip_prefix("guest:").map(str::to_owned));
    if user_id.is_some() && guest_scope.is_some() {
        // One token, one principal: a user id and a guest scope together would read both.
        return Err(AuthError::Malformed(
            "a sync token names a user or a guest scope, not both".into(),
        ));
    }
    let operator = match claims.oa_role.as_deref() {
        None => false,
        Some(engine::auth::OPERATOR_ROLE) => true,
        Some(_) => return Err(AuthError::Malformed("unknown oa_role".into())),
    };
    Ok(AuthContext {
        principal: Principal {
            user_id,
            guest_scope,
            org_id: claims.oa_org_id,
            operator,
        },
        subject,
        device_id: claims.oa_device_id,
        session_id: claims.oa_session_id.or(claims.sid),
        jti: claims.jti,
        issued_at: claims.iat.unwrap_or_default(),
        expires_at: claims.exp.unwrap_or_default(),
        scopes: claims.oa_sync_scopes.0,
        topics: claims.oa_sync_topics.map(|t| t.0),
    })
}

#[cfg(test)]
mod tests;

//! Internal signature auth: the `X-OA-RUNTIME-SIGNATURE` tokens the control plane (and every
//! internal caller) sends on `/internal/v1/*`.
//!
//! A token is `v1.<b64url(claims JSON)>.<b64url(HMAC-SHA256(claims segment, secret))>`, unpadded
//! base64url, where the MAC covers the *encoded* claims segment. [`mint`] makes one, [`verify`]
//! checks signature and time window (pure), and [`NonceStore`] makes each nonce single use across
//! every process sharing the database. [`InternalAuth`] ties them together for servers: either
//! consuming the nonce up front ([`InternalAuth::authenticate`]) or admitting the request with a
//! [`NonceTicket`] whose nonce is recorded in the transaction of the command it carries
//! ([`InternalAuth::admit`], see `docs/adr/0118-nonce-rides-in-the-command.md`).
//!
//! Secrets never appear in `Debug` output, logs or errors.

mod nonces;

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::db::Database;

pub use nonces::{NonceReservation, NonceStore, NonceTicket, TicketState, PRUNE_EVERY_SECS};

/// The HTTP header carrying the token.
pub const SIGNATURE_HEADER: &str = "x-oa-runtime-signature";
/// The one value of the `oa_role` claim (internal and sync tokens alike): the operator principal.
pub const OPERATOR_ROLE: &str = "operator";
/// Token format version prefix.
pub const TOKEN_VERSION: &str = "v1";
/// Clock skew tolerated on `iat` and `exp`, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// Longest lifetime (`exp - iat`) accepted, in seconds. Tokens are single use, so a long lifetime
/// buys nothing but a larger nonce table.
pub const MAX_LIFETIME_SECS: i64 = 24 * 3600;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest shared secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 256;

/// Unpadded base64url for encoding; decoding also tolerates padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// The shared HMAC secret. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// Wraps a secret.
    ///
    /// # Errors
    /// [`AuthError::WeakSecret`] when shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, AuthError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::WeakSecret);
        }
        Ok(Self(secret))
    }

    /// A fresh random secret (32 random bytes, hex encoded), for the embedded dev setup.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(hex.into_bytes())
    }

    /// The secret's bytes, for writing the dev secret file. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// What a token asserts. Only `iat`, `exp` and `nonce` are required; every other claim, when
/// present, narrows what the token may be used for (a request that contradicts it is forbidden).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalClaims {
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Single-use random value.
    pub nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// The control plane sends numeric user ids; both numbers and strings are accepted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_number"
    )]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_scope: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_number"
    )]
    pub oa_org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oa_sync_scopes: Option<Vec<String>>,
    /// `"operator"` marks a token of the operator principal (docs/security.md): it may act on
    /// resources of every principal and mint or revoke for others. Any other value is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oa_role: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(serde::de::Error::custom("expected a string or a number")),
    }
}

impl InternalClaims {
    /// Whether the token speaks for the operator principal (`oa_role = "operator"`).
    pub fn is_operator(&self) -> bool {
        self.oa_role.as_deref() == Some(OPERATOR_ROLE)
    }

    /// Claims valid from `now` for `ttl_secs`, with a fresh random nonce.
    pub fn new(now_unix: i64, ttl_secs: i64) -> Self {
        Self {
            iat: now_unix,
            exp: now_unix.saturating_add(ttl_secs),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            ..Self::default()
        }
    }
}

/// Why a token was refused. Everything but [`AuthError::Forbidden`] and the store failure maps
/// to `401 unauthorized`. Messages never contain the token or the secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing X-OA-RUNTIME-SIGNATURE header")]
    Missing,
    #[error("malformed signature token: {0}")]
    Malformed(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (issued in the future)")]
    NotYetValid,
    #[error("token lifetime exceeds {MAX_LIFETIME_SECS} seconds")]
    LifetimeTooLong,
    #[error("token nonce was already used")]
    Replayed,
    /// A claim contradicts the request (another run, thread or user): `403 forbidden`.
    #[error("token claim {claim} does not match the request")]
    Forbidden { claim: &'static str },
    #[error("signing secret must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
    /// The nonce table could not be reached; the request cannot be authenticated right now.
    #[error("nonce store unavailable")]
    Store(#[source] sqlx::Error),
}

impl AuthError {
    /// A stable machine-readable reason, for `details.reason` and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::LifetimeTooLong => "lifetime_too_long",
            AuthError::Replayed => "replayed_nonce",
            AuthError::Forbidden { .. } => "claim_mismatch",
            AuthError::WeakSecret => "weak_secret",
            AuthError::Store(_) => "nonce_store_unavailable",
        }
    }
}

/// Signs `claims` into a token.
pub fn mint(secret: &SigningSecret, claims: &InternalClaims) -> String {
    let json = serde_json::to_vec(claims).expect("claims always serialise");
    let segment = B64.encode(json);
    let mut mac = secret.mac();
    mac.update(segment.as_bytes());
    let signature = B64.encode(mac.finalize().into_bytes());
    format!("{TOKEN_VERSION}.{segment}.{signature}")
}

/// Checks a token's shape, signature (constant time) and time window at `now_unix`. Does not
/// consume the nonce: see [`NonceStore::consume`].
///
/// # Errors
/// Every [`AuthError`] but `Forbidden`, `Replayed` and `Store`.
pub fn verify(
    secret: &SigningSecret,
    token: &str,
    now_unix: i64,
) -> Result<InternalClaims, AuthError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(version), Some(segment), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("expected v1.<claims>.<signature>"));
    };
    if version != TOKEN_VERSION {
        return Err(AuthError::Malformed("unsupported token version"));
    }
    let signature = B64
        .decode(signature)
        .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
    let mut mac = secret.mac();
    mac.update(segment.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;
    let json = B64
        .decode(segment)
        .map_err(|_| AuthError::Malformed("claims are not base64url"))?;
    let claims: InternalClaims =
        serde_json::from_slice(&json).map_err(|_| AuthError::Malformed("claims are not valid"))?;
    if claims.nonce.is_empty() || claims.nonce.len() > MAX_NONCE_BYTES {
        return Err(AuthError::Malformed("nonce must be 1 to 256 bytes"));
    }
    if claims
        .oa_role
        .as_deref()
        .is_some_and(|role| role != OPERATOR_ROLE)
    {
        return Err(AuthError::Malformed("unknown oa_role"));
    }
    if claims.exp < claims.iat {
        return Err(AuthError::Malformed("exp is before iat"));
    }
    // `exp - iat` overflows for a far-past `iat` and a far-future `exp`: that is a lifetime
    // beyond any maximum, not a wrapped (negative, hence "short") one.
    if claims
        .exp
        .checked_sub(claims.iat)
        .is_none_or(|lifetime| lifetime > MAX_LIFETIME_SECS)
    {
        return Err(AuthError::LifetimeTooLong);
    }
    if claims.iat > now_unix.saturating_add(CLOCK_SKEW_SECS) {
        return Err(AuthError::NotYetValid);
    }
    if claims.exp.saturating_add(CLOCK_SKEW_SECS) < now_unix {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

/// A server's view of internal auth: the secret plus the shared nonce store.
pub struct InternalAuth {
    secret: SigningSecret,
    nonces: Arc<NonceStore>,
}

impl InternalAuth {
    pub fn new(secret: SigningSecret, database: Database) -> Self {
        Self {
            secret,
            nonces: Arc::new(NonceStore::new(database)),
        }
    }

    pub fn secret(&self) -> &SigningSecret {
        &self.secret
    }

    /// Verifies `token` at `now_unix` and consumes its nonce (one durable write) before anything
    /// else happens.
    ///
    /// # Errors
    /// See [`verify`] and [`NonceStore::consume`].
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        now_unix: i64,
    ) -> Result<InternalClaims, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let claims = verify(&self.secret, token, now_unix)?;
        self.nonces
            .consume(&claims.nonce, nonce_expiry(&claims), now_unix)
            .await?;
        Ok(claims)
    }

    /// Verifies `token` at `now_unix` and reserves its nonce in this process, without reading or
    /// writing the nonce table yet. The caller must settle the
    /// returned reservation ([`NonceReservation::settle`]) before it answers: the nonce is then
    /// recorded either by the command that carried its [`NonceTicket`] (in the same
    /// transaction) or by `settle` itself. Two processes admitting the same token both run; the
    /// database's key on the nonce lets exactly one of them record it.
    ///
    /// # Errors
    /// See [`verify`]; [`AuthError::Replayed`] if a request of this process holds the nonce.
    pub async fn admit(
        &self,
        token: Option<&str>,
        now_unix: i64,
    ) -> Result<(InternalClaims, NonceReservation), AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let claims = verify(&self.secret, token, now_unix)?;
        let reservation = self
            .nonces
            .reserve(&claims.nonce, nonce_expiry(&claims), now_unix)
            .await?;
        Ok((claims, reservation))
    }

    pub fn nonces(&self) -> &NonceStore {
        &self.nonces
    }
}

/// Until when a token's nonce must be remembered: past this it fails the time check anyway.
fn nonce_expiry(claims: &InternalClaims) -> i64 {
    claims.exp.saturating_add(CLOCK_SKEW_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SigningSecret {
        SigningSecret::new("test-secret-of-sufficient-length").unwrap()
    }

    fn claims(now: i64) -> InternalClaims {
        InternalClaims {
            user_id: Some("42".into()),
            ..InternalClaims::new(now, 60)
        }
    }

    #[test]
    fn a_minted_token_verifies_and_round_trips_its_claims() {
        let c = claims(1_000);
        let token = mint(&secret(), &c);
        assert!(token.starts_with("v1."));
        assert!(!token.contains('='), "unpadded");
        assert_eq!(verify(&secret(), &token, 1_010).unwrap(), c);
    }

    #[test]
    fn the_signature_covers_the_encoded_claims_segment() {
        // Independent construction: HMAC over the base64url text, not over the JSON.
        let json = br#"{"iat":100,"exp":200,"nonce":"n1","user_id":7}"#;
        let segment = B64.encode(json);
        let mut mac = secret().mac();
        mac.update(segment.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        let token = format!("v1.{segment}.{sig}");
        let verified = verify(&secret(), &token, 150).unwrap();
        assert_eq!(verified.user_id.as_deref(), Some("7"), "numeric user ids");
        assert_eq!(verified.nonce, "n1");
    }

    #[test]
    fn tampering_with_claims_or_signature_is_rejected() {
        let token = mint(&secret(), &claims(1_000));
        let (head, sig) = token.rsplit_once('.').unwrap();
        let forged_claims = mint(
            &SigningSecret::new("another-secret-of-enough-length").unwrap(),
            &claims(1_000),
        );
        assert!(matches!(
            verify(&secret(), &forged_claims, 1_000),
            Err(AuthError::BadSignature)
        ));
        let mut flipped = sig.to_owned();
        let last = flipped.pop().unwrap();
        flipped.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            verify(&secret(), &format!("{head}.{flipped}"), 1_000),
            Err(AuthError::BadSignature) | Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_tokens_are_named_as_such() {
        for bad in ["v1", "v1.a", "v2.a.b", "v1.a.b.c", "v1.abc.!!!"] {
            assert!(
                matches!(verify(&secret(), bad, 0), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            verify(&secret(), "  ", 0),
            Err(AuthError::Missing)
        ));
        // Unauthenticated claims are never parsed: a bad MAC is reported before bad JSON.
        assert!(matches!(
            verify(&secret(), "v1.!!!.AAAA", 0),
            Err(AuthError::BadSignature)
        ));
        // A correctly signed segment that is not claims JSON.
        let segment = B64.encode(b"not json");
        let mut mac = secret().mac();
        mac.update(segment.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        assert!(matches!(
            verify(&secret(), &format!("v1.{segment}.{sig}"), 0),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn the_time_window_allows_thirty_seconds_of_skew() {
        let token = mint(&secret(), &claims(1_000)); // valid 1000..1060
        assert!(verify(&secret(), &token, 970).is_ok());
        assert!(matches!(
            verify(&secret(), &token, 969),
            Err(AuthError::NotYetValid)
        ));
        assert!(verify(&secret(), &token, 1_090).is_ok());
        assert!(matches!(
            verify(&secret(), &token, 1_091),
            Err(AuthError::Expired)
        ));
        // A lifetime whose `exp - iat` overflows i64 is too long, not negative (found by
        // engine/tests/fuzz_tokens.rs: it panicked in debug and passed in release).
        let endless = InternalClaims {
            iat: i64::MIN,
            exp: i64::MAX,
            ..InternalClaims::new(0, 60)
        };
        assert!(matches!(
            verify(&secret(), &mint(&secret(), &endless), 0),
            Err(AuthError::LifetimeTooLong)
        ));
        let long = mint(&secret(), &InternalClaims::new(0, MAX_LIFETIME_SECS + 1));
        assert!(matches!(
            verify(&secret(), &long, 0),
            Err(AuthError::LifetimeTooLong)
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = secret();
        assert!(!format!("{s:?}").contains("test-secret"));
        assert!(matches!(
            SigningSecret::new("short"),
            Err(AuthError::WeakSecret)
        ));
        assert_eq!(SigningSecret::generate().expose().len(), 64);
    }
}

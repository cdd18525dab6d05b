//! Token verification and minting: every check, key rotation, asymmetric keys, scope forms.

use std::sync::Arc;
use std::time::Duration;

use aggregates::Timestamp;
use engine::clock::ManualClock;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::mint::{mint, MintError, MintRequest};
use super::*;

const NOW: i64 = 1_780_000_000;
const SECRET: &str = "khala-test-secret-0123456789";
const OLD_SECRET: &str = "khala-old-secret-0123456789";
const ED_PRIVATE: &[u8] = include_bytes!("testdata/ed25519_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("testdata/ed25519_public.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("testdata/rsa_public.pem");

fn keys() -> KeySet {
    KeySet::new()
        .with_active_hs256("k2", SECRET)
        .unwrap()
        .with_hs256("k1", OLD_SECRET)
        .unwrap()
        .with_public_pem("ed1", ED_PUBLIC)
        .unwrap()
        .with_public_pem("rsa1", RSA_PUBLIC)
        .unwrap()
}

fn verifier_at(now: i64) -> (Verifier, Revocations) {
    let revocations = Revocations::in_memory();
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_unix_seconds(now).unwrap(),
        0,
    ));
    (
        Verifier::with_clock(AuthConfig::new(keys()), revocations.clone(), clock),
        revocations,
    )
}

fn claims() -> Value {
    json!({
        "iss": "https://openagents.com",
        "aud": "openagents-sync",
        "sub": "user:42",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 290,
        "jti": "jti-1",
        "oa_user_id": 42,
        "oa_org_id": "org_1",
        "oa_device_id": "ios:abc",
        "oa_sync_scopes": ["runtime.run_summaries", "runtime.codex_worker_events"],
        "oa_claims_version": "oa_sync_claims_v1"
    })
}

fn sign(claims: &Value, kid: Option<&str>, alg: Algorithm, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        claims,
        Some("k2"),
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

#[test]
fn accepts_a_control_plane_token_and_derives_principal_and_scopes() {
    let (verifier, _) = verifier_at(NOW);
    let context = verifier.verify(&hs(&claims())).unwrap();
    assert_eq!(context.subject, "user:42");
    assert_eq!(context.principal.user_id.as_deref(), Some("42"));
    assert_eq!(context.principal.org_id.as_deref(), Some("org_1"));
    assert_eq!(context.device_id.as_deref(), Some("ios:abc"));
    assert_eq!(context.jti.as_deref(), Some("jti-1"));
    assert_eq!(
        context.scopes,
        ["runtime.run_summaries", "runtime.codex_worker_events"]
    );
    let known = vec![
        "runtime.codex_worker_events".to_owned(),
        "runtime.notifications".to_owned(),
    ];
    assert_eq!(
        context.allowed_topics(&known),
        ["runtime.codex_worker_events"]
    );
}

#[test]
fn scopes_may_be_a_comma_separated_string_and_topics_narrow_them() {
    let (verifier, _) = verifier_at(NOW);
    let token = hs(&with(
        with(
            claims(),
            "oa_sync_scopes",
            json!(" runtime.a, runtime.b,,runtime.a "),
        ),
        "oa_sync_topics",
        json!("runtime.b"),
    ));
    let context = verifier.verify(&token).unwrap();
    assert_eq!(context.scopes, ["runtime.a", "runtime.b"]);
    assert!(!context.grants("runtime.a"));
    assert!(context.grants("runtime.b"));
}

#[test]
fn guest_principals_come_from_the_subject() {
    let (verifier, _) = verifier_at(NOW);
    let token = hs(&without(
        with(claims(), "sub", json!("guest:sess_9")),
        "oa_user_id",
    ));
    let context = verifier.verify(&token).unwrap();
    assert_eq!(context.principal.user_id, None);
    assert_eq!(context.principal.guest_scope.as_deref(), Some("sess_9"));
}

#[test]
fn rotation_accepts_old_kids_and_refuses_unknown_ones() {
    let (verifier, _) = verifier_at(NOW);
    let old = sign(
        &claims(),
        Some("k1"),
        Algorithm::HS256,
        &EncodingKey::from_secret(OLD_SECRET.as_bytes()),
    );
    assert!(verifier.verify(&old).is_ok());
    // No kid: the active key.
    let no_kid = sign(
        &claims(),
        None,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert!(verifier.verify(&no_kid).is_ok());
    let unknown = sign(
        &claims(),
        Some("k9"),
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert_eq!(
        verifier.verify(&unknown),
        Err(AuthError::UnknownKey(Some("k9".into())))
    );
    // Right kid, wrong secret.
    let forged = sign(
        &claims(),
        Some("k2"),
        Algorithm::HS256,
        &EncodingKey::from_secret(OLD_SECRET.as_bytes()),
    );
    assert_eq!(verifier.verify(&forged), Err(AuthError::BadSignature));
}

#[test]
fn eddsa_and_rs256_keys_verify_and_cannot_be_confused_with_hmac() {
    let (verifier, _) = verifier_at(NOW);
    let ed = sign(
        &claims(),
        Some("ed1"),
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
    );
    assert!(verifier.verify(&ed).is_ok());
    let rsa = sign(
        &claims(),
        Some("rsa1"),
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    );
    assert!(verifier.verify(&rsa).is_ok());
    // Algorithm confusion: an HS256 token naming the RSA key, keyed with its public PEM.
    let confused = sign(
        &claims(),
        Some("rsa1"),
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC),
    );
    assert_eq!(verifier.verify(&confused), Err(AuthError::BadSignature));
    // RS256 signature under the EdDSA kid.
    let swapped = sign(
        &claims(),
        Some("ed1"),
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    );
    assert_eq!(verifier.verify(&swapped), Err(AuthError::BadSignature));
}

#[test]
fn time_claims_are_checked_with_leeway_and_a_maximum_age() {
    // 30 s leeway by default.
    let (v, _) = verifier_at(NOW + 290 + 30);
    assert!(v.verify(&hs(&claims())).is_ok());
    let (v, _) = verifier_at(NOW + 290 + 31);
    assert_eq!(v.verify(&hs(&claims())), Err(AuthError::Expired));

    let (v, _) = verifier_at(NOW);
    let future = with(claims(), "nbf", json!(NOW + 31));
    assert_eq!(v.verify(&hs(&future)), Err(AuthError::NotYetValid));
    let future_iat = with(claims(), "iat", json!(NOW + 31));
    assert_eq!(v.verify(&hs(&future_iat)), Err(AuthError::NotYetValid));
    assert!(v
        .verify(&hs(&with(claims(), "nbf", json!(NOW + 30))))
        .is_ok());

    // A long-lived token is refused once older than max_token_age (3600 s + leeway).
    let long = with(
        with(claims(), "exp", json!(NOW + 100_000)),
        "iat",
        json!(NOW - 3631),
    );
    assert_eq!(v.verify(&hs(&long)), Err(AuthError::TooOld));

    assert!(matches!(
        v.verify(&hs(&without(claims(), "exp"))),
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        v.verify(&hs(&without(claims(), "iat"))),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn issuer_audience_and_subject_are_required() {
    let (v, _) = verifier_at(NOW);
    assert_eq!(
        v.verify(&hs(&with(claims(), "iss", json!("https://evil")))),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        v.verify(&hs(&without(claims(), "iss"))),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        v.verify(&hs(&with(claims(), "aud", json!("other")))),
        Err(AuthError::WrongAudience)
    );
    assert!(v
        .verify(&hs(&with(
            claims(),
            "aud",
            json!(["other", "openagents-sync"])
        )))
        .is_ok());
    assert!(matches!(
        v.verify(&hs(&without(claims(), "sub"))),
        Err(AuthError::Malformed(_))
    ));
    assert_eq!(v.verify(""), Err(AuthError::Missing));
    assert!(matches!(
        v.verify("not-a-jwt"),
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn revoked_jtis_sessions_and_devices_are_refused_with_the_right_code() {
    let (v, revocations) = verifier_at(NOW);
    let token = hs(&with(claims(), "oa_session_id", json!("sess_1")));
    assert!(v.verify(&token).is_ok());
    revocations
        .revoke(
            RevocationKind::Session,
            "sess_1",
            "logout",
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let error = v.verify(&token).unwrap_err();
    assert_eq!(error, AuthError::Revoked(RevocationKind::Session));
    assert_eq!(error.code(), crate::protocol::ErrorCode::ReauthRequired);

    let other = hs(&with(claims(), "jti", json!("jti-2")));
    revocations
        .revoke(
            RevocationKind::Jti,
            "jti-2",
            "leaked",
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let error = v.verify(&other).unwrap_err();
    assert_eq!(error, AuthError::Revoked(RevocationKind::Jti));
    assert_eq!(error.code(), crate::protocol::ErrorCode::Unauthorized);
}

#[test]
fn minting_uses_the_control_planes_claims_and_response_shape() {
    let config = AuthConfig::new(keys());
    let known = vec![
        "runtime.run_summaries".to_owned(),
        "runtime.codex_worker_events".to_owned(),
    ];
    let request = MintRequest {
        subject: "user:42".into(),
        scopes: vec!["runtime.run_summaries".into()],
        ttl_seconds: Some(5000),
        org_id: Some("org_1".into()),
        device_id: Some("ios:1".into()),
        session_id: None,
    };
    let minted = mint(&config, &known, &request, NOW).unwrap();
    assert_eq!(minted.token_type, "Bearer");
    assert_eq!(minted.expires_in, 900, "TTL is clamped into 60..=900");
    assert_eq!(minted.issuer, "https://openagents.com");
    assert_eq!(minted.audience, "openagents-sync");
    assert_eq!(minted.subject, "user:42");
    assert_eq!(minted.org_id.as_deref(), Some("org_1"));
    assert_eq!(minted.claims_version, "oa_sync_claims_v1");
    assert_eq!(minted.scopes, ["runtime.run_summaries"]);
    assert_eq!(minted.issued_at, "2026-05-28T20:26:40Z");
    assert_eq!(minted.expires_at, "2026-05-28T20:41:40Z");
    let header = jsonwebtoken::decode_header(&minted.token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("k2"));

    let (v, _) = verifier_at(NOW + 1);
    let context = v.verify(&minted.token).unwrap();
    assert_eq!(context.principal.user_id.as_deref(), Some("42"));
    assert_eq!(context.device_id.as_deref(), Some("ios:1"));
    assert_eq!(context.expires_at - context.issued_at, 900);

    let short = MintRequest {
        ttl_seconds: Some(1),
        ..request.clone()
    };
    assert_eq!(mint(&config, &known, &short, NOW).unwrap().expires_in, 60);
    let default = MintRequest {
        ttl_seconds: None,
        ..request.clone()
    };
    assert_eq!(
        mint(&config, &known, &default, NOW).unwrap().expires_in,
        300
    );

    let bad = MintRequest {
        scopes: vec!["runtime.nope".into()],
        ..request.clone()
    };
    assert_eq!(
        mint(&config, &known, &bad, NOW),
        Err(MintError::InvalidScope(vec!["runtime.nope".into()]))
    );
    for empty in [
        MintRequest {
            org_id: Some(String::new()),
            ..request.clone()
        },
        MintRequest {
            device_id: Some(" ".into()),
            ..request.clone()
        },
        MintRequest {
            session_id: Some(String::new()),
            ..request.clone()
        },
    ] {
        assert!(
            matches!(
                mint(&config, &known, &empty, NOW),
                Err(MintError::InvalidRequest(_))
            ),
            "{empty:?}"
        );
    }
    let verify_only = AuthConfig::new(KeySet::new().with_public_pem("ed1", ED_PUBLIC).unwrap());
    assert_eq!(
        mint(&verify_only, &known, &request, NOW),
        Err(MintError::Unavailable)
    );
}

#[test]
fn asymmetric_signing_keys_mint_verifiable_tokens() {
    let keys = KeySet::new()
        .with_public_pem("ed1", ED_PUBLIC)
        .unwrap()
        .with_signing_pem("ed1", ED_PRIVATE)
        .unwrap();
    let config = AuthConfig::new(keys);
    let known = vec!["runtime.run_summaries".to_owned()];
    let request = MintRequest {
        subject: "user:7".into(),
        scopes: vec!["runtime.run_summaries".into()],
        ..MintRequest::default()
    };
    let minted = mint(&config, &known, &request, NOW).unwrap();
    let (v, _) = verifier_at(NOW);
    assert_eq!(
        v.verify(&minted.token)
            .unwrap()
            .principal
            .user_id
            .as_deref(),
        Some("7")
    );
}

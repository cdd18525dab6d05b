//! Property-based fuzzing of sync JWTs: `Verifier::verify` on arbitrary text, JWT-shaped garbage
//! and correctly signed arbitrary claims (never a panic, never a refusal other than
//! `unauthorized`, every accepted token satisfies every documented check); mint → verify
//! returns the request; any single-byte mutation of a minted token is refused; `Scopes` and the
//! string-or-number claims decode exactly as documented.
//!
//! Seeded and bounded (256 cases per property); `PROPTEST_CASES` / `PROPTEST_RNG_SEED` run
//! longer or elsewhere (docs/fuzzing.md).

use std::sync::Arc;

use aggregates::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use engine::clock::ManualClock;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{json, Map, Value};
use sync_gateway::auth::mint::{mint, MintError, MintRequest};
use sync_gateway::auth::{
    AuthConfig, AuthContext, AuthError, KeySet, Revocations, Scopes, SyncClaims, Verifier,
    DEFAULT_AUDIENCE, DEFAULT_ISSUER,
};
use sync_gateway::protocol::ErrorCode;

const NOW: i64 = 1_780_000_000;
const KID: &str = "fuzz-k1";
const SECRET: &str = "fuzz-sync-secret-0123456789abcdef";
const TOPICS: [&str; 3] = [
    "runtime.run_summaries",
    "runtime.codex_worker_events",
    "runtime.notifications",
];
/// The seed of the normal test run; `PROPTEST_RNG_SEED` replaces it.
const SEED: u64 = 0x0a0f_0222;

/// 256 cases (or `PROPTEST_CASES`) from a fixed seed (or `PROPTEST_RNG_SEED`).
fn config() -> ProptestConfig {
    let defaults = ProptestConfig::default();
    ProptestConfig {
        rng_seed: match defaults.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            fixed => fixed,
        },
        ..defaults
    }
}

fn auth_config() -> AuthConfig {
    AuthConfig::new(
        KeySet::new()
            .with_active_hs256(KID, SECRET)
            .expect("valid key"),
    )
}

/// A verifier whose clock reads `now`.
fn verifier_at(now: i64) -> Verifier {
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_unix_seconds(now).expect("in range"),
        0,
    ));
    Verifier::with_clock(auth_config(), Revocations::in_memory(), clock)
}

fn known() -> Vec<String> {
    TOPICS.iter().map(|t| (*t).to_owned()).collect()
}

/// Signs any JSON as claims with the active key (what a buggy or compromised issuer could send).
fn sign(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("any JSON signs")
}

/// A refusal of a token that was never revoked: `unauthorized`, and never the secret.
fn assert_refused(error: &AuthError) {
    assert!(
        !matches!(error, AuthError::Revoked(_)),
        "nothing was revoked: {error:?}"
    );
    assert_eq!(error.code(), ErrorCode::Unauthorized, "{error:?}");
    assert!(!error.to_string().contains(SECRET));
}

/// Every documented check holds for an accepted token.
fn assert_accepted_is_sound(context: &AuthContext, now: i64) {
    let config = auth_config();
    let leeway = config.leeway.as_secs() as i64;
    let max_age = config.max_token_age.as_secs() as i64;
    assert!(!context.subject.is_empty());
    assert!(
        context.principal.user_id.is_none() || context.principal.guest_scope.is_none(),
        "one token, one principal: {context:?}"
    );
    assert!(now <= context.expires_at.saturating_add(leeway));
    assert!(context.issued_at <= now.saturating_add(leeway));
    assert!(now.saturating_sub(context.issued_at) <= max_age + leeway);
    for scope in &context.scopes {
        assert!(!scope.is_empty() && scope.trim() == scope, "{scope:?}");
        assert_eq!(context.scopes.iter().filter(|s| *s == scope).count(), 1);
    }
}

/// Any JSON value, with numbers at the edges (and nested a few levels).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![i64::MIN, -1, 0, 1, NOW - 10, NOW, NOW + 10, i64::MAX])
            .prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "(?s).{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            "",
            " ",
            "operator",
            "admin",
            "user:1",
            "guest:g",
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
            "a, b,,a",
            " runtime.run_summaries ",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The claims of a token the control plane would mint.
fn valid_claims() -> Value {
    json!({
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": "user:42",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 290,
        "jti": "jti-1",
        "oa_user_id": 42,
        "oa_org_id": "org_1",
        "oa_sync_scopes": ["runtime.run_summaries"],
    })
}

/// Valid claims with up to four claims replaced by any JSON value or removed.
fn near_valid_claims() -> impl Strategy<Value = Value> {
    const NAMES: [&str; 17] = [
        "iss",
        "aud",
        "sub",
        "iat",
        "nbf",
        "exp",
        "jti",
        "oa_user_id",
        "oa_org_id",
        "oa_device_id",
        "oa_session_id",
        "sid",
        "oa_guest_scope",
        "oa_sync_scopes",
        "oa_sync_topics",
        "oa_claims_version",
        "oa_role",
    ];
    prop::collection::vec(
        (
            prop::sample::select(NAMES.to_vec()),
            proptest::option::of(json_value()),
        ),
        0..5,
    )
    .prop_map(|edits| {
        let mut claims = valid_claims();
        let object = claims.as_object_mut().expect("object");
        for (name, value) in edits {
            match value {
                Some(value) => object.insert(name.to_owned(), value),
                None => object.remove(name),
            };
        }
        claims
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_sync_verify_refuses_arbitrary_text(token in "(?s).{0,300}") {
        match verifier_at(NOW).verify(&token) {
            Ok(context) => prop_assert!(false, "accepted arbitrary text: {context:?}"),
            Err(error) => assert_refused(&error),
        }
    }

    /// `header.payload.signature` with an arbitrary JSON header (any `alg`, including `none`,
    /// any `kid`) and arbitrary payload and signature bytes.
    #[test]
    fn fuzz_sync_verify_refuses_jwt_shaped_garbage(
        alg in prop::sample::select(vec!["HS256", "none", "None", "HS512", "RS256", "EdDSA", "ES256", ""]),
        kid in proptest::option::of(prop::sample::select(vec![KID, "other", ""])),
        extra_header in proptest::option::of(json_value()),
        payload in prop_oneof![
            json_value().prop_map(|v| serde_json::to_vec(&v).expect("JSON")),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        signature in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut header = Map::new();
        header.insert("alg".into(), json!(alg));
        header.insert("typ".into(), json!("JWT"));
        if let Some(kid) = kid {
            header.insert("kid".into(), json!(kid));
        }
        if let Some(extra) = extra_header {
            header.insert("x".into(), extra);
        }
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("JSON")),
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&signature),
        );
        match verifier_at(NOW).verify(&token) {
            Ok(context) => prop_assert!(false, "accepted an unsigned token: {context:?}"),
            Err(error) => assert_refused(&error),
        }
    }

    #[test]
    fn fuzz_sync_verify_checks_every_claim_of_signed_arbitrary_claims(
        claims in prop_oneof![json_value(), near_valid_claims()],
        skew in prop_oneof![Just(0i64), -4000i64..4000],
    ) {
        let now = NOW + skew;
        match verifier_at(now).verify(&sign(&claims)) {
            Err(error) => assert_refused(&error),
            Ok(context) => {
                assert_accepted_is_sound(&context, now);
                prop_assert_eq!(&claims["iss"], &json!(DEFAULT_ISSUER));
                let aud_ok = claims["aud"] == json!(DEFAULT_AUDIENCE)
                    || claims["aud"].as_array().is_some_and(|a| a.contains(&json!(DEFAULT_AUDIENCE)));
                prop_assert!(aud_ok, "audience {:?}", claims["aud"]);
                let role = claims.get("oa_role").filter(|r| !r.is_null());
                prop_assert_eq!(context.principal.operator, role.is_some());
                prop_assert!(role.is_none_or(|r| r == "operator"), "role {role:?}");
            }
        }
    }

    #[test]
    fn fuzz_sync_mint_then_verify_returns_the_request(
        subject in prop_oneof![
            "user:[a-z0-9]{0,8}",
            "guest:[a-z0-9]{0,8}",
            "(?s).{0,16}",
        ],
        scopes in prop::collection::vec(
            prop_oneof![
                prop::sample::select(TOPICS.to_vec()).prop_map(str::to_owned),
                prop::sample::select(TOPICS.to_vec()).prop_map(|t| format!(" {t} ")),
                "(?s).{0,8}",
            ],
            0..4,
        ),
        ttl_seconds in proptest::option::of(prop_oneof![0u64..2000, any::<u64>()]),
        org_id in proptest::option::of("(?s).{0,8}"),
        device_id in proptest::option::of("(?s).{0,8}"),
        session_id in proptest::option::of("(?s).{0,8}"),
        elapsed in 0i64..60,
    ) {
        let request = MintRequest { subject, scopes, ttl_seconds, org_id, device_id, session_id };
        let config = auth_config();
        let trimmed_scopes: Vec<String> = request.scopes.iter().map(|s| s.trim().to_owned()).collect();
        let minted = match mint(&config, &known(), &request, NOW) {
            Ok(minted) => minted,
            Err(MintError::InvalidRequest(_)) => {
                // An empty subject, or an org, device or session given but blank.
                let blank = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
                prop_assert!(
                    request.subject.trim().is_empty()
                        || blank(&request.org_id)
                        || blank(&request.device_id)
                        || blank(&request.session_id)
                );
                return Ok(());
            }
            Err(MintError::InvalidScope(unknown)) => {
                prop_assert!(
                    trimmed_scopes.is_empty()
                        || trimmed_scopes.iter().any(|s| !TOPICS.contains(&s.as_str()))
                );
                prop_assert!(unknown.iter().all(|s| !TOPICS.contains(&s.as_str())));
                return Ok(());
            }
            Err(MintError::Unavailable) => {
                return Err(TestCaseError::fail("a signing key is configured"));
            }
        };
        let context = verifier_at(NOW + elapsed).verify(&minted.token).expect("a minted token verifies");
        let subject = request.subject.trim();
        prop_assert_eq!(context.subject.as_str(), subject);
        prop_assert_eq!(context.principal.user_id.as_deref(), subject.strip_prefix("user:"));
        prop_assert_eq!(context.principal.guest_scope.as_deref(), subject.strip_prefix("guest:"));
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        prop_assert_eq!(context.principal.org_id, non_empty(&request.org_id));
        prop_assert_eq!(context.device_id, non_empty(&request.device_id));
        prop_assert_eq!(context.session_id, non_empty(&request.session_id));
        prop_assert!(!context.principal.operator, "mint never makes an operator token");
        prop_assert_eq!(&context.scopes, &minted.scopes);
        let mut expected_scopes: Vec<String> = Vec::new();
        for scope in trimmed_scopes {
            if !expected_scopes.contains(&scope) {
                expected_scopes.push(scope);
            }
        }
        prop_assert_eq!(&context.scopes, &expected_scopes);
        prop_assert_eq!(context.jti, minted.jti);
        prop_assert_eq!(context.issued_at, NOW);
        let ttl = request.ttl_seconds.unwrap_or(300).clamp(60, 900);
        prop_assert_eq!(context.expires_at, NOW + ttl as i64);
    }

    #[test]
    fn fuzz_any_single_byte_mutation_of_a_sync_token_is_refused(
        position in any::<prop::sample::Index>(),
        replacement in 0u8..0x80,
    ) {
        let request = MintRequest {
            subject: "user:42".into(),
            scopes: vec![TOPICS[0].into()],
            org_id: Some("org_1".into()),
            ..MintRequest::default()
        };
        let token = mint(&auth_config(), &known(), &request, NOW).expect("mints").token;
        let mut bytes = token.clone().into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let mutated = String::from_utf8(bytes).expect("ASCII in, ASCII out");
        match verifier_at(NOW).verify(&mutated) {
            Ok(context) => prop_assert!(
                false,
                "byte {at} of {token:?} set to {replacement:#04x} still verifies as {context:?}"
            ),
            Err(error) => assert_refused(&error),
        }
    }

    /// `Scopes`: a JSON list or a comma-separated string; items trimmed, empty ones dropped,
    /// duplicates dropped keeping the first; any other JSON is an error.
    #[test]
    fn fuzz_scopes_decode_as_documented(
        value in prop_oneof![
            json_value(),
            prop::collection::vec("[ a-c,.]{0,6}", 0..6).prop_map(|v| json!(v)),
            "[ a-c,.]{0,24}".prop_map(|s| json!(s)),
        ],
    ) {
        let items: Option<Vec<String>> = match &value {
            Value::String(text) => Some(text.split(',').map(str::to_owned).collect()),
            Value::Array(list) => list.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => None,
        };
        let decoded = serde_json::from_value::<Scopes>(value.clone());
        match items {
            None => prop_assert!(decoded.is_err(), "{value:?} decoded as {decoded:?}"),
            Some(items) => {
                let mut expected: Vec<String> = Vec::new();
                for item in items {
                    let item = item.trim();
                    if !item.is_empty() && !expected.iter().any(|e| e == item) {
                        expected.push(item.to_owned());
                    }
                }
                prop_assert_eq!(decoded.expect("a list or a string decodes").0, expected);
            }
        }
    }

    /// The string-or-number claims: a number becomes its decimal text, an empty string or null
    /// is absent, anything else is refused; decoding never panics.
    #[test]
    fn fuzz_string_or_number_claims_decode_as_documented(
        name in prop::sample::select(vec![
            "oa_user_id", "oa_org_id", "oa_device_id", "oa_session_id", "sid", "oa_guest_scope",
        ]),
        value in json_value(),
    ) {
        let decoded = serde_json::from_value::<SyncClaims>(json!({ name: value.clone() }));
        let expected: Result<Option<String>, ()> = match &value {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            _ => Err(()),
        };
        let got = decoded.map(|claims| match name {
            "oa_user_id" => claims.oa_user_id,
            "oa_org_id" => claims.oa_org_id,
            "oa_device_id" => claims.oa_device_id,
            "oa_session_id" => claims.oa_session_id,
            "sid" => claims.sid,
            _ => claims.oa_guest_scope,
        });
        prop_assert_eq!(got.map_err(|_| ()), expected);
    }
}

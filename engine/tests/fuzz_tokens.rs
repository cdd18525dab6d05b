//! Property-based fuzzing of internal tokens (`engine::auth::{mint, verify}`) and of principal
//! resolution (`engine::principal::resolve`): arbitrary text and arbitrary signed claims never
//! panic and are refused with a documented [`AuthError`]; mint → verify returns the claims; any
//! single-byte mutation of a valid token is refused; a token's claimed principal always wins.
//!
//! Seeded and bounded (256 cases per property); `PROPTEST_CASES` / `PROPTEST_RNG_SEED` run
//! longer or elsewhere (docs/fuzzing.md).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use engine::auth::{
    mint, verify, AuthError, InternalClaims, SigningSecret, CLOCK_SKEW_SECS, MAX_LIFETIME_SECS,
    MAX_NONCE_BYTES, OPERATOR_ROLE,
};
use engine::principal::{resolve, Denied, PrincipalError};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{json, Map, Value};
use sha2::Sha256;

const SECRET: &str = "fuzz-secret-of-sufficient-length";
/// The seed of the normal test run; `PROPTEST_RNG_SEED` replaces it.
const SEED: u64 = 0x0a0f_0221;

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

fn secret() -> SigningSecret {
    SigningSecret::new(SECRET).expect("long enough")
}

/// Signs an arbitrary claims segment the way the control plane does (independent of `mint`):
/// HMAC-SHA256 over the base64url text of `json`.
fn sign_raw(json: &[u8]) -> String {
    let segment = URL_SAFE_NO_PAD.encode(json);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(segment.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("v1.{segment}.{signature}")
}

/// The errors `verify` documents (it never returns `Forbidden`, `Replayed`, `Store` or
/// `WeakSecret`), each with its stable reason.
fn assert_documented(error: &AuthError) {
    assert!(
        matches!(
            error,
            AuthError::Missing
                | AuthError::Malformed(_)
                | AuthError::BadSignature
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::LifetimeTooLong
        ),
        "verify returned an undocumented error: {error:?}"
    );
    let text = error.to_string();
    assert!(!text.contains(SECRET), "the secret leaked into {text:?}");
    assert!(
        [
            "missing_token",
            "malformed_token",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "lifetime_too_long"
        ]
        .contains(&error.reason()),
        "{error:?}"
    );
}

/// Strings that are sometimes valid ids, sometimes equal to each other, sometimes garbage.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["1", "2", "42", "g1", "g2", "org_a", "org_b"])
            .prop_map(str::to_owned),
        "[a-z0-9_:.-]{1,12}",
        "(?s).{0,12}",
    ]
}

/// Arbitrary, valid claims: every optional claim present or not, any Unicode text.
fn valid_claims() -> impl Strategy<Value = InternalClaims> {
    let text = || proptest::option::of("(?s).{0,24}");
    (
        (any::<i64>(), 0..=MAX_LIFETIME_SECS, "(?s).{1,64}"),
        (text(), text(), text(), text(), text()),
        (
            proptest::option::of(prop::collection::vec("(?s).{0,16}", 0..4)),
            any::<bool>(),
        ),
    )
        .prop_filter("nonce within 1..=256 bytes", |((_, _, nonce), _, _)| {
            nonce.len() <= MAX_NONCE_BYTES
        })
        .prop_map(
            |(
                (iat, ttl, nonce),
                (run_id, thread_id, user_id, guest_scope, oa_org_id),
                (scopes, op),
            )| {
                InternalClaims {
                    iat,
                    exp: iat.saturating_add(ttl),
                    nonce,
                    run_id,
                    thread_id,
                    user_id,
                    guest_scope,
                    oa_org_id,
                    oa_sync_scopes: scopes,
                    oa_role: op.then(|| OPERATOR_ROLE.to_owned()),
                }
            },
        )
}

/// Any JSON value, with numbers at the edges of i64/u64/f64 (and nested a few levels).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            i64::MAX - 1,
            i64::MAX
        ])
        .prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "(?s).{0,16}".prop_map(Value::String),
        Just(json!(OPERATOR_ROLE)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A claims object: each real claim name absent, or any JSON value; plus junk keys.
fn claims_object() -> impl Strategy<Value = Value> {
    const NAMES: [&str; 10] = [
        "iat",
        "exp",
        "nonce",
        "run_id",
        "thread_id",
        "user_id",
        "guest_scope",
        "oa_org_id",
        "oa_sync_scopes",
        "oa_role",
    ];
    (
        prop::collection::vec(proptest::option::of(json_value()), NAMES.len()),
        prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..3),
    )
        .prop_map(|(values, junk)| {
            let mut object: Map<String, Value> = junk.into_iter().collect();
            for (name, value) in NAMES.iter().zip(values) {
                if let Some(value) = value {
                    object.insert((*name).to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

/// Valid claims with up to three claims replaced by any JSON value or removed: deep enough
/// into `verify` to reach the time and lifetime checks with hostile numbers.
fn near_valid_claims() -> impl Strategy<Value = Value> {
    (
        valid_claims(),
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "iat",
                    "exp",
                    "nonce",
                    "user_id",
                    "oa_org_id",
                    "oa_role",
                    "oa_sync_scopes",
                ]),
                proptest::option::of(json_value()),
            ),
            0..4,
        ),
    )
        .prop_map(|(claims, edits)| {
            let mut value = serde_json::to_value(claims).expect("claims serialise");
            let object = value.as_object_mut().expect("claims are an object");
            for (name, replacement) in edits {
                match replacement {
                    Some(v) => object.insert(name.to_owned(), v),
                    None => object.remove(name),
                };
            }
            value
        })
}

/// Valid claims whose `iat` and `exp` sit at the edges of i64 (overflow in time arithmetic).
fn extreme_window_claims() -> impl Strategy<Value = Value> {
    let edge = || {
        prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            -MAX_LIFETIME_SECS,
            -1,
            0,
            1,
            i64::MAX - 1,
            i64::MAX,
        ])
    };
    (valid_claims(), edge(), edge()).prop_map(|(claims, iat, exp)| {
        let mut value = serde_json::to_value(claims).expect("claims serialise");
        value["iat"] = json!(iat);
        value["exp"] = json!(exp);
        value
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_verify_refuses_arbitrary_text_with_a_documented_error(
        token in "(?s).{0,300}",
        now in any::<i64>(),
    ) {
        match verify(&secret(), &token, now) {
            Ok(claims) => prop_assert!(false, "accepted arbitrary text as a token: {claims:?}"),
            Err(error) => assert_documented(&error),
        }
    }

    #[test]
    fn fuzz_verify_refuses_token_shaped_garbage(
        version in prop_oneof![Just("v1".to_owned()), "[a-z0-9]{0,3}"],
        segment in "[A-Za-z0-9_=+/-]{0,200}",
        signature in "[A-Za-z0-9_=+/-]{0,60}",
        extra in proptest::option::of("[A-Za-z0-9_.-]{0,10}"),
        now in any::<i64>(),
    ) {
        let mut token = format!("{version}.{segment}.{signature}");
        if let Some(extra) = extra {
            token = format!("{token}.{extra}");
        }
        match verify(&secret(), &token, now) {
            Ok(claims) => prop_assert!(false, "accepted an unsigned token: {claims:?}"),
            Err(error) => assert_documented(&error),
        }
    }

    /// Correctly signed, arbitrary claims (what a buggy or compromised issuer could send):
    /// never a panic; whatever passes satisfies every documented invariant.
    #[test]
    fn fuzz_verify_checks_every_invariant_of_signed_arbitrary_claims(
        claims in prop_oneof![claims_object(), near_valid_claims(), extreme_window_claims()],
        now in prop_oneof![any::<i64>(), -100_000i64..100_000],
    ) {
        let token = sign_raw(&serde_json::to_vec(&claims).expect("JSON"));
        match verify(&secret(), &token, now) {
            Err(error) => assert_documented(&error),
            Ok(verified) => {
                prop_assert!(!verified.nonce.is_empty() && verified.nonce.len() <= MAX_NONCE_BYTES);
                prop_assert!(verified.oa_role.is_none() || verified.is_operator());
                prop_assert!(verified.iat <= verified.exp);
                prop_assert!(
                    verified.exp.checked_sub(verified.iat).is_some_and(|l| l <= MAX_LIFETIME_SECS),
                    "lifetime over the maximum accepted: iat {} exp {}", verified.iat, verified.exp
                );
                prop_assert!(verified.iat <= now.saturating_add(CLOCK_SKEW_SECS));
                prop_assert!(verified.exp.saturating_add(CLOCK_SKEW_SECS) >= now);
            }
        }
    }

    #[test]
    fn fuzz_mint_then_verify_returns_the_claims_inside_the_window_only(
        claims in valid_claims(),
        offset in -(CLOCK_SKEW_SECS + 5)..=(MAX_LIFETIME_SECS + CLOCK_SKEW_SECS + 5),
    ) {
        let token = mint(&secret(), &claims);
        let now = claims.iat.saturating_add(offset);
        let result = verify(&secret(), &token, now);
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            prop_assert!(matches!(result, Err(AuthError::NotYetValid)), "{result:?}");
        } else if claims.exp.saturating_add(CLOCK_SKEW_SECS) < now {
            prop_assert!(matches!(result, Err(AuthError::Expired)), "{result:?}");
        } else {
            prop_assert_eq!(result.expect("a minted token verifies"), claims);
        }
    }

    #[test]
    fn fuzz_any_single_byte_mutation_of_a_valid_token_is_refused(
        claims in valid_claims(),
        position in any::<prop::sample::Index>(),
        replacement in 0u8..0x80,
    ) {
        let token = mint(&secret(), &claims);
        let mut bytes = token.clone().into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let mutated = String::from_utf8(bytes).expect("ASCII in, ASCII out");
        match verify(&secret(), &mutated, claims.iat) {
            Ok(accepted) => prop_assert!(
                false,
                "byte {at} of {token:?} set to {replacement:#04x} still verifies as {accepted:?}"
            ),
            Err(error) => assert_documented(&error),
        }
    }

    #[test]
    fn fuzz_a_claimed_principal_always_wins_over_headers(
        user_claim in proptest::option::of(id_text()),
        guest_claim in proptest::option::of(id_text()),
        org_claim in proptest::option::of(id_text()),
        operator in any::<bool>(),
        user_header in proptest::option::of(id_text()),
        guest_header in proptest::option::of(id_text()),
        resource_owner in proptest::option::of((any::<bool>(), id_text())),
        resource_org in proptest::option::of(id_text()),
    ) {
        use aggregates::ids::{GuestScope, OrgId, Owner, UserId};
        let claims = InternalClaims {
            user_id: user_claim.clone(),
            guest_scope: guest_claim.clone(),
            oa_org_id: org_claim.clone(),
            oa_role: operator.then(|| OPERATOR_ROLE.to_owned()),
            ..InternalClaims::new(0, 60)
        };
        let result = resolve(&claims, user_header.as_deref(), guest_header.as_deref());
        let user = |id: &str| UserId::parse(id).ok().map(Owner::User);
        let guest = |id: &str| GuestScope::parse(id).ok().map(Owner::Guest);
        let org_ok = org_claim.as_deref().is_none_or(|o| OrgId::parse(o).is_ok());
        match (&user_claim, &guest_claim) {
            (Some(_), Some(_)) => prop_assert!(
                matches!(result, Err(PrincipalError::MalformedToken(_))), "{result:?}"
            ),
            (Some(claimed), None) => {
                let contradicted = user_header.as_deref().is_some_and(|h| h != claimed)
                    || guest_header.is_some();
                if !org_ok {
                    prop_assert!(matches!(result, Err(PrincipalError::MalformedToken(_))), "{result:?}");
                } else if contradicted {
                    prop_assert_eq!(result.clone(), Err(PrincipalError::Mismatch { claim: "user_id" }));
                } else if let Some(owner) = user(claimed) {
                    prop_assert_eq!(result.clone().map(|p| p.owner), Ok(Some(owner)));
                } else {
                    prop_assert!(matches!(result, Err(PrincipalError::MalformedToken(_))), "{result:?}");
                }
            }
            (None, Some(claimed)) => {
                let contradicted = guest_header.as_deref().is_some_and(|h| h != claimed)
                    || user_header.is_some();
                if !org_ok {
                    prop_assert!(matches!(result, Err(PrincipalError::MalformedToken(_))), "{result:?}");
                } else if contradicted {
                    prop_assert_eq!(result.clone(), Err(PrincipalError::Mismatch { claim: "guest_scope" }));
                } else if let Some(owner) = guest(claimed) {
                    prop_assert_eq!(result.clone().map(|p| p.owner), Ok(Some(owner)));
                } else {
                    prop_assert!(matches!(result, Err(PrincipalError::MalformedToken(_))), "{result:?}");
                }
            }
            (None, None) => {
                let expected = match (&user_header, &guest_header) {
                    _ if !org_ok => Err("malformed"),
                    (Some(_), Some(_)) => Err("ambiguous"),
                    (Some(h), None) => user(h).map(Some).ok_or("missing"),
                    (None, Some(h)) => guest(h).map(Some).ok_or("missing"),
                    (None, None) if operator => Ok(None),
                    (None, None) => Err("missing"),
                };
                match (expected, &result) {
                    (Ok(owner), Ok(p)) => prop_assert_eq!(&p.owner, &owner),
                    (Err("malformed"), Err(PrincipalError::MalformedToken(_)))
                    | (Err("ambiguous"), Err(PrincipalError::Ambiguous))
                    | (Err("missing"), Err(PrincipalError::Missing)) => {}
                    (expected, got) => prop_assert!(false, "expected {expected:?}, got {got:?}"),
                }
            }
        }
        if let Ok(principal) = result {
            prop_assert_eq!(principal.operator, operator);
            prop_assert_eq!(
                principal.org.as_ref().map(|o| o.as_str().to_owned()),
                org_claim.clone()
            );
            // Reaching a resource: the operator reaches all; anyone else only its own, in its org.
            let owner = resource_owner.and_then(|(is_user, id)| if is_user { user(&id) } else { guest(&id) });
            let org = resource_org.and_then(|o| OrgId::parse(o).ok());
            let access = principal.may_access(owner.as_ref(), org.as_ref());
            if operator {
                prop_assert_eq!(access, Ok(()));
            } else if owner.is_none() || principal.owner != owner {
                prop_assert_eq!(access, Err(Denied::NotOwner));
            } else if principal.org != org {
                prop_assert_eq!(access, Err(Denied::OrgMismatch));
            } else {
                prop_assert_eq!(access, Ok(()));
            }
        }
    }
}

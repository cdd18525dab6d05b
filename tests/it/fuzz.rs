//! Property-based fuzzing of the HTTP surface: the extractors (`ApiJson`, `ApiQuery`, `PathId`)
//! on a small router driven with `oneshot`, then the real app (both journals) with arbitrary
//! bodies, query strings, path ids and principal headers. Properties: never a 5xx; every
//! rejection is the error envelope with the code its status documents; a token's claimed
//! principal always wins over headers; a thread-bound token never lists another thread's runs,
//! however the query string spells `thread_id`; Khala's hydration route answers arbitrary sync
//! tokens (intact or mutated), topics and query strings without a 5xx.
//!
//! Seeded and bounded (256 cases per extractor property, 64 per real-app property);
//! `PROPTEST_CASES` / `PROPTEST_RNG_SEED` run longer or elsewhere (docs/fuzzing.md).

use std::future::Future;
use std::sync::Arc;

use aggregates::ids::RunId;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use axum::{Json, Router};
use openagents_runtime::api::error::ApiError;
use openagents_runtime::api::extract::{ApiJson, ApiQuery, PathId};
use openagents_runtime::api::runs::{CreateRunRequest, ListQuery};
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError, TestCaseResult, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::app::{spawn_app, TestApp, TestResponse};
use crate::support::on_both_backends;

/// The seed of the normal test run; `PROPTEST_RNG_SEED` replaces it.
const SEED: u64 = 0x0a0f_0224;
/// The small router's body limit.
const BODY_LIMIT: usize = 1024;

/// `cases` cases out of every 256 of `PROPTEST_CASES` (default 256), from a fixed seed (or
/// `PROPTEST_RNG_SEED`).
fn config(cases_per_256: u32) -> ProptestConfig {
    let defaults = ProptestConfig::default();
    ProptestConfig {
        cases: (defaults.cases.saturating_mul(cases_per_256) / 256).max(1),
        rng_seed: match defaults.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            fixed => fixed,
        },
        ..defaults
    }
}

/// The documented code of each error status (docs/http-api.md).
fn code_of(status: u16) -> Option<&'static str> {
    Some(match status {
        400 | 405 | 413 | 415 => "invalid_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        _ => return None,
    })
}

/// A failure is the envelope with the code its status documents; nothing is a 5xx.
fn assert_documented(status: u16, body: &Value, context: &str) -> TestCaseResult {
    prop_assert!(status < 500, "{status} for {context}: {body}");
    if status >= 400 {
        let code = code_of(status)
            .ok_or_else(|| TestCaseError::fail(format!("undocumented {status} for {context}")))?;
        prop_assert_eq!(
            body["error"]["code"].as_str(),
            Some(code),
            "{} {}",
            context,
            body
        );
        prop_assert!(body["error"]["message"].is_string(), "{} {}", context, body);
        prop_assert!(body["error"]["details"].is_object(), "{} {}", context, body);
    }
    Ok(())
}

/// Any JSON value (nested a few levels), with the edge numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "(?s).{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["run_1", "thr_1", "succeeded", "text_delta", ""])
            .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The run routes the real-app property drives.
const ROUTES: [&str; 7] = [
    "create", "list", "snapshot", "frames", "cancel", "start", "finish",
];

/// A valid body for `route` on thread `thr-fz` with up to three fields replaced, removed or
/// added (none in a third of the cases).
fn body_for(route: &'static str) -> impl Strategy<Value = Value> {
    let base = match route {
        "create" => json!({ "run_id": "run-new", "thread_id": "thr-fz", "metadata": { "k": "v" } }),
        "frames" => json!({
            "thread_id": "thr-fz", "frame_id": "f1", "type": "text_delta", "payload": { "delta": "x" }
        }),
        "cancel" => json!({ "thread_id": "thr-fz", "reason": "stop" }),
        "start" => json!({ "thread_id": "thr-fz", "source": "fuzz" }),
        "finish" => json!({ "thread_id": "thr-fz", "status": "succeeded" }),
        _ => json!({ "thread_id": "thr-fz" }),
    };
    let field = prop::sample::select(vec![
        "thread_id",
        "run_id",
        "metadata",
        "frame_id",
        "type",
        "payload",
        "occurred_at",
        "expected_seq",
        "reason",
        "source",
        "status",
        "reason_class",
        "error_code",
        "user_id",
    ]);
    let edits = prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec((field, proptest::option::of(json_value())), 1..4),
    ];
    edits.prop_map(move |edits| {
        let mut body = base.clone();
        let object = body.as_object_mut().expect("object");
        for (name, value) in edits {
            match value {
                Some(value) => object.insert(name.to_owned(), value),
                None => object.remove(name),
            };
        }
        body
    })
}

/// A valid body of any run route, edited.
fn near_valid_body() -> impl Strategy<Value = Value> {
    prop::sample::select(ROUTES.to_vec()).prop_flat_map(body_for)
}

/// Request body bytes: any JSON, near-valid bodies, raw bytes (invalid UTF-8 too), whitespace,
/// and bodies over the small router's limit.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        near_valid_body().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        "[ \t\r\n]{0,8}".prop_map(String::into_bytes),
        (BODY_LIMIT - 8..BODY_LIMIT + 64).prop_map(|n| format!(
            "{{\"thread_id\":\"{}\"}}",
            "a".repeat(n)
        )
        .into_bytes()),
    ]
}

/// A query string of URI-legal characters: pairs with run-route keys (sometimes percent-encoded
/// or doubled) and values that are valid, invalid or percent-encoded garbage.
fn query_string() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "thread_id",
            "thread%5Fid",
            "thread_id%00",
            "Thread_id",
            "thread+id",
            "limit",
            "cursor",
            "tail_ms",
            "",
            "%",
            "thread_id[]",
        ])
        .prop_map(str::to_owned),
        "[a-z_%0-9+]{0,8}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "thr-a",
            "thr-b",
            "thr%2Db",
            "thr-b%00",
            "thr-a%20",
            "%74hr-b",
            "thr+b",
            "",
            "0",
            "1",
            "200",
            "201",
            "-1",
            "%FF%FE",
            "%zz",
            "%",
            "99999999999999999999",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9%+_.~:-]{0,12}",
    ];
    (
        prop::collection::vec((key, proptest::option::of(value)), 0..5),
        prop::sample::select(vec!["&", "&&", ";"]),
    )
        .prop_map(|(pairs, separator)| {
            pairs
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect::<Vec<_>>()
                .join(separator)
        })
}

/// Mostly `thread_id=<value>` (the thread itself, another one, or encodings of either) followed
/// by arbitrary pairs; otherwise an arbitrary query string.
fn query_for(thread: &'static str) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        3 => Just(thread.to_owned()),
        2 => prop::sample::select(vec![
            "thr-b", "thr%2Db", "%74hr-b", "thr-b%00", "thr%2Da", "thr-a%20", "thr-b&thread_id=thr-a",
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        3 => (value, proptest::option::weighted(0.5, query_string()))
            .prop_map(|(v, extra)| match extra {
                Some(extra) => format!("thread_id={v}&{extra}"),
                None => format!("thread_id={v}"),
            }),
        1 => query_string(),
    ]
}

/// Percent-encodes every byte but the unreserved ones (a path segment).
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The extractors on a small router

async fn echo_body(ApiJson { value, raw }: ApiJson<CreateRunRequest>) -> Json<Value> {
    Json(json!({
        "thread_id": value.thread_id.as_str(),
        "run_id": value.run_id.map(|id| id.as_str().to_owned()),
        "raw": raw,
    }))
}

async fn echo_query(ApiQuery(query): ApiQuery<ListQuery>) -> Json<Value> {
    Json(json!({ "thread_id": query.thread_id, "limit": query.limit }))
}

async fn echo_id(PathId(id): PathId<RunId>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "run_id": id.as_str() })))
}

fn extractor_router() -> Router {
    Router::new()
        .route("/json", post(echo_body))
        .route("/query", get(echo_query))
        .route("/runs/{run_id}", get(echo_id))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Sends `request` through the router (no socket) and reads status and JSON body.
fn call(request: Request<Body>) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = extractor_router()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_json_bodies_are_accepted_exactly_when_valid_and_refused_with_a_reason(
        body in body_bytes(),
        content_type in proptest::option::of(prop::sample::select(vec![
            "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
            "application/merge-patch+json", "text/plain", "application/x-www-form-urlencoded", "",
        ])),
    ) {
        let mut request = Request::post("/json");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, response) = call(request.body(Body::from(body.clone())).expect("request"));
        assert_documented(status, &response, &String::from_utf8_lossy(&body))?;
        let json_type = content_type.is_none_or(|t| {
            let essence = t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
        let reason = response["error"]["details"]["reason"].as_str().unwrap_or_default();
        if !json_type {
            prop_assert_eq!((status, reason), (415, "unsupported_media_type"));
        } else if body.len() > BODY_LIMIT {
            prop_assert_eq!((status, reason), (413, "body_too_large"));
        } else if status == 200 {
            // Accepted exactly what the request type accepts (an empty body is `{}`).
            let raw: Value = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                serde_json::from_slice(&body).expect("accepted bodies are JSON")
            };
            prop_assert!(serde_json::from_value::<CreateRunRequest>(raw.clone()).is_ok());
            prop_assert_eq!(&response["raw"], &raw);
        } else {
            prop_assert_eq!(status, 400);
            prop_assert!(
                ["malformed_json", "not_an_object", "invalid_body"].contains(&reason),
                "reason {:?}", reason
            );
            let parsed = if body.iter().all(u8::is_ascii_whitespace) {
                Ok(json!({}))
            } else {
                serde_json::from_slice::<Value>(&body)
            };
            // Only objects are bodies (serde alone would also take `[run_id, thread_id]`).
            let valid = parsed.is_ok_and(|raw| {
                raw.is_object() && serde_json::from_value::<CreateRunRequest>(raw).is_ok()
            });
            prop_assert!(!valid, "refused a valid body");
        }
    }

    #[test]
    fn fuzz_query_strings_are_parsed_or_refused_as_invalid_query(query in query_string()) {
        let Ok(request) = Request::get(format!("/query?{query}")).body(Body::empty()) else {
            return Ok(()); // not a URI at all: never reaches a server
        };
        let (status, response) = call(request);
        assert_documented(status, &response, &query)?;
        match status {
            200 => prop_assert!(response.get("thread_id").is_some()),
            400 => prop_assert_eq!(&response["error"]["details"]["reason"], "invalid_query"),
            other => prop_assert!(false, "status {} for {:?}", other, query),
        }
    }

    #[test]
    fn fuzz_path_ids_are_accepted_exactly_when_valid(id in "(?s).{1,40}") {
        let (status, response) = call(
            Request::get(format!("/runs/{}", encode_segment(&id))).body(Body::empty()).expect("request"),
        );
        assert_documented(status, &response, &id)?;
        match RunId::parse(id.clone()) {
            Ok(valid) => {
                prop_assert_eq!(status, 200);
                prop_assert_eq!(response["run_id"].as_str(), Some(valid.as_str()));
            }
            Err(_) => {
                prop_assert_eq!(status, 400);
                prop_assert_eq!(&response["error"]["details"]["field"], "run_id");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real app, both journals

on_both_backends!(
    fuzz_run_routes_answer_arbitrary_requests_with_documented_errors,
    fuzz_a_claimed_principal_always_wins_over_headers,
    fuzz_a_thread_bound_token_never_lists_another_threads_runs,
    fuzz_hydration_answers_arbitrary_tokens_topics_and_queries_without_a_5xx,
);

/// Runs a property against the real app: the runner (and its shrinking) on a blocking thread,
/// each case's requests on the test's runtime.
async fn check_app<S, F, Fut>(
    app: &Arc<TestApp>,
    cases_per_256: u32,
    strategy: impl FnOnce() -> S + Send + 'static,
    test: F,
) where
    S: Strategy,
    F: Fn(Arc<TestApp>, S::Value) -> Fut + Send + 'static,
    Fut: Future<Output = TestCaseResult>,
{
    let handle = tokio::runtime::Handle::current();
    let app = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let strategy = strategy();
        TestRunner::new(config(cases_per_256))
            .run(&strategy, |value| handle.block_on(test(app.clone(), value)))
            .map_err(|e| e.to_string())
    })
    .await
    .expect("the runner thread");
    if let Err(error) = result {
        panic!("{error}");
    }
}

async fn fuzz_run_routes_answer_arbitrary_requests_with_documented_errors(
    db: &engine::testing::TestDb,
) {
    let app = Arc::new(spawn_app(db).await);
    created(app.create_run("run-fz", "thr-fz").await);
    let strategy = || {
        prop::sample::select(ROUTES.to_vec()).prop_flat_map(|route| {
            (
                Just(route),
                prop_oneof![
                    3 => Just("run-fz".to_owned()),
                    1 => "(?s).{1,20}".prop_map(|s| encode_segment(&s)),
                ],
                query_for("thr-fz"),
                prop_oneof![
                    3 => body_for(route).prop_map(|v| v.to_string()),
                    1 => json_value().prop_map(|v| v.to_string()),
                    1 => "(?s).{0,40}",
                ],
            )
        })
    };
    check_app(
        &app,
        64,
        strategy,
        |app, (route, run, query, body)| async move {
            let request = match route {
                "create" => app.req(reqwest::Method::POST, "/internal/v1/runs"),
                "list" => app.get(&format!("/internal/v1/runs?{query}")),
                "snapshot" => app.get(&format!("/internal/v1/runs/{run}/snapshot?{query}")),
                verb => app.req(
                    reqwest::Method::POST,
                    &format!("/internal/v1/runs/{run}/{verb}"),
                ),
            };
            let request = if ["list", "snapshot"].contains(&route) {
                request
            } else {
                request.raw(body.clone(), Some("application/json"))
            };
            let response: TestResponse = request.send().await;
            assert_documented(
                response.status,
                &response.json,
                &format!("{route} {run} ?{query} {body}"),
            )
        },
    )
    .await;
}

#[track_caller]
fn created(response: TestResponse) {
    assert_eq!(response.status, 201, "{}", response.text);
}

/// Principal claims and headers drawn from valid, invalid, empty and padded ids.
fn principal_text() -> impl Strategy<Value = Option<&'static str>> {
    proptest::option::of(prop::sample::select(vec![
        "1", "2", "g1", " 1", "", "bad id!",
    ]))
}

async fn fuzz_a_claimed_principal_always_wins_over_headers(db: &engine::testing::TestDb) {
    let app = Arc::new(spawn_app(db).await);
    created(app.create_run("run-p", "thr-p").await);
    let strategy = || {
        (
            principal_text(),
            principal_text(),
            principal_text(),
            principal_text(),
        )
    };
    check_app(
        &app,
        64,
        strategy,
        |app, (user_claim, guest_claim, user_header, guest_header)| async move {
            let mut request = app
                .get("/internal/v1/runs/run-p/snapshot?thread_id=thr-p")
                .no_principal()
                .claims(|c| {
                    c.user_id = user_claim.map(str::to_owned);
                    c.guest_scope = guest_claim.map(str::to_owned);
                });
            if let Some(h) = user_header {
                request = request.header("x-oa-user-id", h);
            }
            if let Some(h) = guest_header {
                request = request.header("x-oa-guest-scope", h);
            }
            let response = request.send().await;
            let context = format!(
                "claims {user_claim:?}/{guest_claim:?} headers {user_header:?}/{guest_header:?}"
            );
            assert_documented(response.status, &response.json, &context)?;
            // Headers as the server reads them: trimmed, empty is absent.
            fn header(h: Option<&'static str>) -> Option<&'static str> {
                h.map(str::trim).filter(|h| !h.is_empty())
            }
            let (user_h, guest_h) = (header(user_header), header(guest_header));
            let valid = |id: &str| !id.is_empty() && !id.contains(' ') && !id.contains('!');
            let expected: (u16, &str) = match (user_claim, guest_claim) {
                (Some(_), Some(_)) => (401, "malformed_token"),
                (Some(user), None) => {
                    if user_h.is_some_and(|h| h != user) || guest_h.is_some() {
                        (403, "claim_mismatch")
                    } else if !valid(user) {
                        (401, "malformed_token")
                    } else if user == "1" {
                        (200, "")
                    } else {
                        (403, "not_owner")
                    }
                }
                (None, Some(guest)) => {
                    if guest_h.is_some_and(|h| h != guest) || user_h.is_some() {
                        (403, "claim_mismatch")
                    } else if !valid(guest) {
                        (401, "malformed_token")
                    } else {
                        (403, "not_owner")
                    }
                }
                (None, None) => match (user_h, guest_h) {
                    (Some(_), Some(_)) => (400, "ambiguous_principal"),
                    (Some(user), None) if !valid(user) => (401, "invalid_principal"),
                    (Some("1"), None) => (200, ""),
                    (Some(_), None) => (403, "not_owner"),
                    (None, Some(guest)) if !valid(guest) => (401, "invalid_principal"),
                    (None, Some(_)) => (403, "not_owner"),
                    (None, None) => (401, "invalid_principal"),
                },
            };
            prop_assert_eq!(
                (response.status, response.reason()),
                expected,
                "{}: {}",
                context,
                response.text
            );
            Ok(())
        },
    )
    .await;
}

async fn fuzz_a_thread_bound_token_never_lists_another_threads_runs(db: &engine::testing::TestDb) {
    let app = Arc::new(spawn_app(db).await);
    created(app.create_run("run-a", "thr-a").await);
    created(app.create_run("run-b", "thr-b").await);
    check_app(
        &app,
        64,
        || query_for("thr-a"),
        |app, query| async move {
            let response = app
                .get(&format!("/internal/v1/runs?{query}"))
                .claims(|c| c.thread_id = Some("thr-a".into()))
                .send()
                .await;
            assert_documented(response.status, &response.json, &query)?;
            if response.status == 200 {
                let runs = response.json["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for run in runs {
                    prop_assert_eq!(&run["thread_id"], "thr-a", "?{} listed {}", query, run);
                }
            }
            Ok(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Khala's HTTP hydration: sync JWTs and query strings over the real app

async fn fuzz_hydration_answers_arbitrary_tokens_topics_and_queries_without_a_5xx(
    db: &engine::testing::TestDb,
) {
    let app = Arc::new(crate::app::spawn_app_with_sync(db).await);
    let lane = app.sync.as_ref().expect("the sync lane runs");
    let token = sync_gateway::auth::mint::mint(
        lane.gateway.verifier().config(),
        lane.gateway.known_topics(),
        &sync_gateway::auth::mint::MintRequest {
            subject: "user:1".into(),
            scopes: vec!["runtime.run_summaries".into()],
            ..Default::default()
        },
        sync_gateway::test_utils::now_secs(),
    )
    .expect("mints")
    .token;
    let strategy = move || {
        let mutated = (any::<prop::sample::Index>(), 0x21u8..0x7f);
        (
            prop_oneof![
                3 => Just("runtime.run_summaries".to_owned()),
                1 => Just("runtime.codex_worker_events".to_owned()),
                1 => "(?s).{1,16}".prop_map(|s| encode_segment(&s)),
            ],
            prop_oneof![
                2 => Just(None),
                2 => mutated.prop_map(Some),
            ],
            prop_oneof![
                3 => Just(Some("Bearer")),
                1 => prop::sample::select(vec![Some("bearer"), Some("Basic"), Some(""), None]),
            ],
            prop_oneof![
                1 => Just(String::new()),
                1 => "[A-Za-z0-9%+_.~:-]{0,12}".prop_map(|v| format!("doc_key={v}")),
                1 => query_string(),
            ],
            Just(token.clone()),
        )
    };
    check_app(
        &app,
        64,
        strategy,
        |app, (topic, mutation, scheme, query, token)| async move {
            let mut token = token.into_bytes();
            let mut intact = true;
            if let Some((index, byte)) = mutation {
                let at = index.index(token.len());
                intact = token[at] == byte;
                token[at] = byte;
            }
            let token = String::from_utf8(token).expect("ASCII");
            let url = format!("{}/sync/v1/topics/{topic}/docs?{query}", app.base);
            let mut request = app.http.get(url);
            if let Some(scheme) = scheme {
                request = request.header("authorization", format!("{scheme} {token}"));
            }
            let response = request.send().await.expect("reaches the server");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let context = format!("{topic} ?{query} {scheme:?} mutated {mutation:?}");
            prop_assert!(status < 500, "{} for {}: {}", status, context, body);
            if status >= 400 {
                prop_assert!(body["error"]["code"].is_string(), "{}: {}", context, body);
                prop_assert!(
                    body["error"]["message"].is_string(),
                    "{}: {}",
                    context,
                    body
                );
            } else {
                prop_assert!(intact, "a mutated token hydrated: {}", context);
                prop_assert!(
                    scheme.is_some_and(|s| s.eq_ignore_ascii_case("bearer")),
                    "hydrated without a bearer token: {}",
                    context
                );
                prop_assert_eq!(topic.as_str(), "runtime.run_summaries", "{}", context);
            }
            Ok(())
        },
    )
    .await;
}

//! L402 end to end: reconcile against the real gateway (deploy, probes, rollback, idempotence) over
//! the file and HTTP control planes, and a buyer who pays the gateway's invoice through the wallet
//! executor and then reads the paid route.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{any, post};
use axum::{Json, Router};
use engine::testing::TestDb;
use lightning::l402::control_plane::{ApiControlPlane, ControlPlane, FileControlPlane};
use lightning::l402::gateway::{router as gateway_router, GatewayConfig, L402Gateway};
use lightning::l402::reconcile::{reconcile_once, ReconcileOptions};
use lightning::lnd::LndNode;
use lightning::testing::FakeLnd;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::executor::{spawn_app, test_config};

pub(super) const OPS: &str = "ops-token";

pub(super) async fn serve(app: Router, shutdown: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
            .ok();
    });
    base
}

/// An upstream service that answers every request with its path.
async fn upstream(shutdown: &CancellationToken) -> String {
    serve(
        Router::new().fallback(any(|uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
            Json(json!({ "premium": true, "path": uri.path(), "sawAuthorization": headers.contains_key("authorization") }))
        })),
        shutdown,
    )
    .await
}

pub(super) struct Gateway {
    pub(super) base: String,
    pub(super) gateway: Arc<L402Gateway>,
}

pub(super) async fn start_gateway(fake: &FakeLnd, shutdown: &CancellationToken) -> Gateway {
    let node = Arc::new(LndNode::connect(&fake.config()).await.unwrap());
    let gateway = L402Gateway::new(
        node,
        GatewayConfig {
            ops_token: Some(OPS.into()),
            root_key: b"test-root-key-0123456789abcdef00".to_vec(),
            location: "openagents-test".into(),
            invoice_expiry_secs: 600,
            state_file: None,
        },
    )
    .unwrap();
    let base = serve(gateway_router(gateway.clone()), shutdown).await;
    Gateway { base, gateway }
}

pub(super) fn paywalls(upstream: &str, path: &str, price: i64) -> Value {
    json!({ "paywalls": [{
        "paywallId": "pw_premium", "ownerId": "owner_1", "name": "Premium", "status": "active",
        "policy": { "pricingMode": "fixed", "fixedAmountMsats": price, "killSwitch": false },
        "routes": [{ "routeId": "route_1", "hostPattern": "127.0.0.1", "pathPattern": path,
                     "upstreamUrl": format!("{upstream}/content"), "protocol": "http",
                     "timeoutMs": 5000, "priority": 1 }]
    }]})
}

fn options(gateway: &Gateway, request_id: &str) -> ReconcileOptions {
    ReconcileOptions {
        request_id: request_id.into(),
        gateway_url: gateway.base.clone(),
        ops_token: Some(OPS.into()),
        health_path: "/healthz".into(),
        probe_url: None,
        proxy_authorization: None,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_applies_is_idempotent_and_rolls_back_a_broken_config() {
    let shutdown = CancellationToken::new();
    let fake = FakeLnd::start().await;
    let up = upstream(&shutdown).await;
    let gw = start_gateway(&fake, &shutdown).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("paywalls.json");
    let records = dir.path().join("records.jsonl");
    std::fs::write(&input, paywalls(&up, "/premium", 2_500).to_string()).unwrap();
    let control = FileControlPlane::new(input.clone(), Some(records.clone()));

    let first = reconcile_once(&control, &options(&gw, "reconcile:1"))
        .await
        .unwrap();
    assert_eq!(first.deployment_status, "applied", "{first:?}");
    assert!(first.ok && first.health_ok && first.challenge_ok && first.proxy_ok && first.changed);
    assert_eq!(first.rule_count, 1);
    assert!(first.config_hash.starts_with("cfg_"));
    assert_eq!(gw.gateway.active().unwrap().config_hash, first.config_hash);
    assert_eq!(gw.gateway.deploy_count(), 1);

    // Unchanged config: nothing is deployed, the probes still pass.
    let second = reconcile_once(&control, &options(&gw, "reconcile:2"))
        .await
        .unwrap();
    assert_eq!(second.deployment_status, "applied");
    assert!(!second.changed);
    assert_eq!(second.config_hash, first.config_hash);
    assert_eq!(gw.gateway.deploy_count(), 1);

    // A config whose upstream is dead fails the proxy check and is rolled back.
    std::fs::write(
        &input,
        paywalls("http://127.0.0.1:9", "/premium", 3_000).to_string(),
    )
    .unwrap();
    let third = reconcile_once(&control, &options(&gw, "reconcile:3"))
        .await
        .unwrap();
    assert_eq!(third.deployment_status, "rolled_back", "{third:?}");
    assert_eq!(third.failure_code.unwrap().as_str(), "proxy_check_failed");
    assert_eq!(
        third.rolled_back_from.as_deref(),
        Some(first.config_hash.as_str())
    );
    assert!(third.health_ok && third.challenge_ok && !third.proxy_ok);
    assert_eq!(gw.gateway.active().unwrap().config_hash, first.config_hash);

    // An invalid config never reaches the gateway.
    std::fs::write(&input, paywalls(&up, "/premium", 0).to_string()).unwrap();
    let fourth = reconcile_once(&control, &options(&gw, "reconcile:4"))
        .await
        .unwrap();
    assert_eq!(fourth.deployment_status, "failed");
    assert_eq!(
        fourth.failure_code.unwrap().as_str(),
        "compile_validation_failed"
    );
    assert_eq!(fourth.diagnostics[0].code, "missing_pricing");
    assert_eq!(gw.gateway.active().unwrap().config_hash, first.config_hash);

    let recorded = control.read_records().unwrap();
    let statuses: Vec<String> = recorded
        .iter()
        .filter(|r| r["kind"] == "deployment")
        .map(|r| r["deployment"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        ["pending", "applied", "pending", "rolled_back", "failed"]
    );
    let events: Vec<String> = recorded
        .iter()
        .filter(|r| r["kind"] == "event")
        .map(|r| r["event"]["eventType"].as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "gateway_reconcile_health_ok",
        "gateway_reconcile_challenge_ok",
        "gateway_reconcile_proxy_ok",
        "gateway_reconcile_applied",
        "gateway_reconcile_unchanged",
        "gateway_reconcile_rolled_back",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "missing {expected} in {events:?}"
        );
    }
    let text = std::fs::read_to_string(&records).unwrap();
    assert!(!text.contains(OPS), "the ops token is never recorded");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_deploy_with_nothing_to_roll_back_to_is_failed() {
    let shutdown = CancellationToken::new();
    let fake = FakeLnd::start().await;
    let gw = start_gateway(&fake, &shutdown).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("paywalls.json");
    std::fs::write(
        &input,
        paywalls("http://127.0.0.1:9", "/premium", 1_000).to_string(),
    )
    .unwrap();
    let control = FileControlPlane::new(input, None);
    let summary = reconcile_once(&control, &options(&gw, "r")).await.unwrap();
    assert_eq!(summary.deployment_status, "failed");
    assert_eq!(summary.failure_code.unwrap().as_str(), "proxy_check_failed");
    // A wrong ops token cannot even read the active deployment.
    let mut bad = options(&gw, "r2");
    bad.ops_token = Some("wrong".into());
    let summary = reconcile_once(&control, &bad).await.unwrap();
    assert_eq!(
        summary.failure_code.unwrap().as_str(),
        "active_lookup_failed"
    );
    shutdown.cancel();
}

#[derive(Default)]
struct MockControlPlane {
    calls: Mutex<Vec<Value>>,
    paywalls: Mutex<Value>,
}

async fn control_plane_handler(
    State(state): State<Arc<MockControlPlane>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if body["args"]["secret"] != "cp-secret" {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "ok": false, "error": "bad secret" })),
        );
    }
    state
        .calls
        .lock()
        .unwrap()
        .push(json!({ "kind": kind, "body": body }));
    match body["functionName"].as_str() {
        Some("lightning/ops:listPaywallControlPlaneState") => {
            (StatusCode::OK, Json(state.paywalls.lock().unwrap().clone()))
        }
        Some("lightning/ops:recordGatewayCompileIntent") => (
            StatusCode::OK,
            Json(
                json!({ "ok": true, "deployment": { "deploymentId": body["args"]["deploymentId"], "status": body["args"]["status"] } }),
            ),
        ),
        Some("lightning/ops:recordGatewayDeploymentEvent") => {
            (StatusCode::OK, Json(json!({ "ok": true })))
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "ok": false, "error": "unknown function" })),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reads_and_records_through_the_control_plane_api() {
    let shutdown = CancellationToken::new();
    let fake = FakeLnd::start().await;
    let up = upstream(&shutdown).await;
    let gw = start_gateway(&fake, &shutdown).await;
    let mock = Arc::new(MockControlPlane::default());
    *mock.paywalls.lock().unwrap() =
        json!({ "ok": true, "paywalls": paywalls(&up, "/api/*", 1_000)["paywalls"] });
    let base = serve(
        Router::new()
            .route(
                "/api/internal/lightning-ops/control-plane/{kind}",
                post(control_plane_handler),
            )
            .with_state(mock.clone()),
        &shutdown,
    )
    .await;
    let control = ApiControlPlane::new(&base, "cp-secret").unwrap();
    let summary = reconcile_once(&control, &options(&gw, "reconcile:api"))
        .await
        .unwrap();
    assert_eq!(summary.deployment_status, "applied", "{summary:?}");
    let calls = mock.calls.lock().unwrap().clone();
    assert_eq!(calls[0]["kind"], "query");
    assert_eq!(
        calls[0]["body"]["args"]["statuses"],
        json!(["active", "paused"])
    );
    let intents: Vec<&Value> = calls
        .iter()
        .filter(|c| c["body"]["functionName"] == "lightning/ops:recordGatewayCompileIntent")
        .collect();
    assert_eq!(intents.len(), 2);
    assert_eq!(intents[0]["kind"], "mutation");
    assert_eq!(intents[1]["body"]["args"]["status"], "applied");
    assert_eq!(
        intents[1]["body"]["args"]["configHash"],
        summary.config_hash.as_str()
    );
    assert!(calls
        .iter()
        .any(|c| c["body"]["functionName"] == "lightning/ops:recordGatewayDeploymentEvent"));
    // A wrong secret is an error that does not contain the secret.
    let wrong = ApiControlPlane::new(&base, "not-the-secret").unwrap();
    let error = wrong.list_paywalls().await.unwrap_err().to_string();
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains("not-the-secret"));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_pays_the_gateway_invoice_through_the_executor_and_reads_the_paid_route() {
    let shutdown = CancellationToken::new();
    let fake = FakeLnd::start().await;
    let up = upstream(&shutdown).await;
    let gw = start_gateway(&fake, &shutdown).await;
    let compiled = lightning::l402::compile::compile(
        &lightning::l402::compile::paywalls_from_json(&paywalls(&up, "/premium", 2_500)).unwrap(),
    );
    gw.gateway
        .deploy(
            "dep_1",
            None,
            &compiled.config_hash,
            &compiled.aperture_yaml,
        )
        .unwrap();

    let http = reqwest::Client::new();
    let url = format!("{}/premium?q=1", gw.base);
    let challenge = http.get(&url).send().await.unwrap();
    assert_eq!(challenge.status(), StatusCode::PAYMENT_REQUIRED);
    let header = challenge.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.headers().get("x-oa-smoke-auth").is_none(),
        "no smoke credential without the ops token"
    );
    let macaroon = header
        .split("macaroon=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let invoice = header
        .split("invoice=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // The buyer pays through the wallet executor (host allowlisted), on the same fake node.
    let db = TestDb::sqlite().await;
    let mut config = test_config();
    config.policy.allowed_hosts.insert("127.0.0.1".into());
    let executor = spawn_app(&db.database, &fake.config(), config).await;
    let (status, paid) = executor
        .pay_with(
            Some("buy-1"),
            json!({ "payment": { "invoice": invoice, "maxAmountMsats": 5_000, "host": "127.0.0.1" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["result"]["payment"]["amountMsats"], 2_500);
    let preimage = paid["result"]["payment"]["preimageHex"]
        .as_str()
        .unwrap()
        .to_owned();

    let response = http
        .get(&url)
        .header("authorization", format!("L402 {macaroon}:{preimage}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "premium": true, "path": "/content", "sawAuthorization": false })
    );

    // A wrong preimage, a forged macaroon and another paywall's route are refused.
    let wrong = http
        .get(&url)
        .header(
            "authorization",
            format!("L402 {macaroon}:{}", "00".repeat(32)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let forged = lightning::l402::macaroon::Macaroon::mint(
        b"another-key",
        "x",
        lightning::l402::macaroon::Macaroon::from_base64(&macaroon)
            .unwrap()
            .identifier,
        vec!["services=pw_premium:0".into()],
    );
    let forged = http
        .get(&url)
        .header(
            "authorization",
            format!("L402 {}:{preimage}", forged.to_base64()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let unknown = http
        .get(format!("{}/elsewhere", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    shutdown.cancel();
    db.cleanup().await;
}

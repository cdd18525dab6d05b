//! The Lightning payment executor end to end: real HTTP to the executor's router, real gRPC over
//! TLS to an in-process fake LND, a real journal (SQLite, and PostgreSQL where it matters), and a
//! real child process killed mid-payment.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aggregates::ids::RunId;
use aggregates::payment::{Msat, Payment, SpendLedger, WalletId};
use engine::clock::Stamps;
use engine::notify::JournalNotifier;
use engine::testing::TestDb;
use engine::{Database, Engine, EngineConfig};
use lightning::executor::{router, ExecutorConfig, PaymentExecutor};
use lightning::lnd::{LndConfig, LndNode};
use lightning::testing::{Behavior, FakeLnd};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::on_both_backends;

pub(super) const TOKEN: &str = "test-token";
pub(super) const WALLET: &str = "wallet-test";

pub(super) fn engine_for(database: &Database) -> Arc<Engine> {
    Arc::new(Engine::new(
        database.journal(),
        Stamps::system(),
        Arc::new(JournalNotifier::new()),
        EngineConfig::default(),
    ))
}

pub(super) fn test_config() -> ExecutorConfig {
    let mut config = ExecutorConfig::new(WalletId::parse(WALLET).unwrap());
    config.auth_token = Some(TOKEN.into());
    config.response_wait = Duration::from_secs(10);
    config.not_found_grace = Duration::from_millis(300);
    config.policy.allowed_hosts = ["sats4ai.com".to_owned(), "l402.openagents.com".to_owned()]
        .into_iter()
        .collect::<BTreeSet<_>>();
    config
}

pub(super) struct App {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    pub(super) executor: Arc<PaymentExecutor>,
    pub(super) engine: Arc<Engine>,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the executor and waits until it is ready (its start-up reconcile is done).
pub(super) async fn spawn_app(database: &Database, lnd: &LndConfig, config: ExecutorConfig) -> App {
    let app = spawn_app_unready(database, lnd, config).await;
    for _ in 0..400 {
        if app.executor.is_ready() {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the executor did not become ready");
}

/// Starts the executor without waiting for it to be ready.
pub(super) async fn spawn_app_unready(
    database: &Database,
    lnd: &LndConfig,
    config: ExecutorConfig,
) -> App {
    let engine = engine_for(database);
    let node = Arc::new(LndNode::connect(lnd).await.expect("lnd channel"));
    let shutdown = CancellationToken::new();
    let executor = PaymentExecutor::start(engine.clone(), node, config, shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(executor.clone());
    let token = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
            .ok();
    });
    App {
        base,
        http: reqwest::Client::new(),
        executor,
        engine,
        shutdown,
    }
}

impl App {
    pub(super) async fn pay_with(
        &self,
        request_id: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/pay-bolt11", self.base))
            .bearer_auth(TOKEN)
            .json(&body);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.expect("pay request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }

    pub(super) async fn pay(
        &self,
        request_id: &str,
        invoice: &str,
        max: u64,
    ) -> (StatusCode, Value) {
        self.pay_with(
            Some(request_id),
            json!({ "payment": { "invoice": invoice, "maxAmountMsats": max, "host": "sats4ai.com" } }),
        )
        .await
    }

    pub(super) async fn status(&self) -> Value {
        self.http
            .get(format!("{}/status", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub(super) async fn ledger(&self) -> SpendLedger {
        self.engine.load::<SpendLedger>(WALLET).await.unwrap().0
    }
}

// --- the happy path, idempotency, conflicts -------------------------------------------------------

async fn pays_once_and_retries_return_the_original_result(db: &TestDb) {
    let fake = FakeLnd::start().await;
    fake.set_fee_msats(7);
    let app = spawn_app(&db.database, &fake.config(), test_config()).await;
    let invoice = fake.issue_invoice(50_000, "coffee");

    let (status, body) = app.pay("req-1", &invoice.payment_request, 100_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["requestId"], "req-1");
    let result = &body["result"];
    assert_eq!(result["requestId"], "req-1");
    assert_eq!(result["walletId"], WALLET);
    assert_eq!(
        result["payment"]["paymentId"],
        invoice.payment_hash.as_str()
    );
    assert_eq!(result["payment"]["amountMsats"], 50_000);
    assert_eq!(
        result["payment"]["preimageHex"],
        invoice.preimage_hex.as_str()
    );
    assert_eq!(result["quotedAmountMsats"], 50_000);
    // The settled amount and the routing fee LND paid.
    assert_eq!(result["windowSpendMsatsAfterPayment"], 50_007);
    let receipt = &result["receipt"];
    let keys: Vec<&str> = receipt
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "receiptVersion",
            "requestId",
            "walletId",
            "host",
            "paymentId",
            "invoiceHash",
            "quotedAmountMsats",
            "settledAmountMsats",
            "preimageSha256",
            "paidAtMs",
            "rail",
            "assetId",
            "receiptId",
            "canonicalJsonSha256"
        ]
    );
    let invoice_hash = aggregates::payment::types::sha256_hex(&invoice.payment_request);
    assert_eq!(receipt["invoiceHash"], invoice_hash.as_str());
    assert_eq!(
        receipt["preimageSha256"],
        aggregates::payment::types::sha256_hex(&invoice.preimage_hex).as_str()
    );
    let canonical = format!(
        "{{\"receiptVersion\":\"openagents.lightning.wallet_receipt.v1\",\"requestId\":\"req-1\",\
         \"walletId\":\"{WALLET}\",\"host\":\"sats4ai.com\",\"paymentId\":\"{}\",\"invoiceHash\":\"{invoice_hash}\",\
         \"quotedAmountMsats\":50000,\"settledAmountMsats\":50000,\"preimageSha256\":\"{}\",\"paidAtMs\":{},\
         \"rail\":\"lightning\",\"assetId\":\"BTC_LN\"}}",
        invoice.payment_hash,
        aggregates::payment::types::sha256_hex(&invoice.preimage_hex),
        result["payment"]["paidAtMs"]
    );
    let hash = aggregates::payment::types::sha256_hex(&canonical);
    assert_eq!(receipt["canonicalJsonSha256"], hash.as_str());
    assert_eq!(
        receipt["receiptId"],
        format!("lwr_{}", &hash[..24]).as_str()
    );

    // A retry (same id) returns the same result and does not pay again.
    let (again_status, again) = app.pay("req-1", &invoice.payment_request, 100_000).await;
    assert_eq!(again_status, StatusCode::OK);
    assert_eq!(again, body);
    // The same id with another invoice is a conflict.
    let other = fake.issue_invoice(10_000, "tea");
    let (conflict, conflict_body) = app.pay("req-1", &other.payment_request, 100_000).await;
    assert_eq!(conflict, StatusCode::CONFLICT);
    assert_eq!(conflict_body["error"]["code"], "idempotency_conflict");
    // Another request id for the paid invoice gets the settlement, without paying again.
    let (second, second_body) = app.pay("req-2", &invoice.payment_request, 100_000).await;
    assert_eq!(second, StatusCode::OK);
    assert_eq!(second_body["result"]["payment"], body["result"]["payment"]);
    assert_eq!(second_body["result"]["requestId"], "req-2");
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    assert!(fake.invoice_settled(&invoice.payment_hash));

    let (payment, _) = app
        .engine
        .load::<Payment>(&invoice.payment_hash)
        .await
        .unwrap();
    assert_eq!(payment.settlement.as_ref().unwrap().fee_msats, 7);
    let ledger = app.ledger().await;
    assert!(ledger.reservations.is_empty());
    assert_eq!(ledger.recent.len(), 1);
}

async fn concurrent_requests_for_one_invoice_pay_it_once(db: &TestDb) {
    let fake = FakeLnd::start().await;
    fake.set_default_behavior(Behavior::Succeed {
        after: Duration::from_millis(200),
    });
    let app = Arc::new(spawn_app(&db.database, &fake.config(), test_config()).await);
    let invoice = fake.issue_invoice(20_000, "shared");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let app = app.clone();
        let pr = invoice.payment_request.clone();
        tasks.push(tokio::spawn(async move {
            app.pay(&format!("conc-{}", i % 6), &pr, 50_000).await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["result"]["payment"]["preimageHex"],
            invoice.preimage_hex.as_str()
        );
    }
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    let (payment, _) = app
        .engine
        .load::<Payment>(&invoice.payment_hash)
        .await
        .unwrap();
    assert_eq!(payment.attempts.len(), 1);
    assert_eq!(payment.requests.len(), 6);
}

async fn the_window_cap_holds_under_concurrency(db: &TestDb) {
    let fake = FakeLnd::start().await;
    fake.set_default_behavior(Behavior::Succeed {
        after: Duration::from_millis(100),
    });
    let app = Arc::new(spawn_app(&db.database, &fake.config(), test_config()).await);
    let mut tasks = Vec::new();
    // Each reserves 190,000 + the 10,000 fee limit = 200,000: exactly five fit in 1,000,000.
    for i in 0..10 {
        let app = app.clone();
        let invoice = fake.issue_invoice(190_000, &format!("item {i}"));
        tasks.push(tokio::spawn(async move {
            app.pay(&format!("cap-{i}"), &invoice.payment_request, 200_000)
                .await
        }));
    }
    let mut paid = 0;
    let mut denied = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => paid += 1,
            StatusCode::FORBIDDEN => {
                assert_eq!(body["error"]["code"], "window_cap_exceeded", "{body}");
                assert_eq!(body["error"]["details"]["windowCapMsats"], 1_000_000);
                assert_eq!(body["error"]["details"]["quotedAmountMsats"], 190_000);
                denied += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((paid, denied), (5, 5));
    let ledger = app.ledger().await;
    // Settled: five amounts, no fee charged by the fake.
    assert_eq!(
        ledger.window_spend(app.engine.now(), 300_000, None),
        950_000
    );
    assert!(ledger.reservations.is_empty());
}

/// Sixty concurrent payers against a window with room for fifty (each reserves its amount plus
/// its fee limit): exactly fifty pay, and each sees the settled spend right after its own
/// settlement — 19,000 × k for the k-th — never other payers' open reservations.
async fn sixty_concurrent_payers_fill_the_window_exactly_and_each_sees_its_own_spend(db: &TestDb) {
    let fake = FakeLnd::start().await;
    fake.set_default_behavior(Behavior::Succeed {
        after: Duration::from_millis(50),
    });
    let mut config = test_config();
    config.fee_limit = lightning::executor::FeeLimit {
        fixed_msats: 1_000,
        ppm: 0,
    };
    config.response_wait = Duration::from_secs(60);
    let app = Arc::new(spawn_app(&db.database, &fake.config(), config).await);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let app = app.clone();
        let invoice = fake.issue_invoice(19_000, &format!("payer {i}"));
        tasks.push(tokio::spawn(async move {
            app.pay(&format!("many-{i}"), &invoice.payment_request, 20_000)
                .await
        }));
    }
    let mut seen = BTreeSet::new();
    let mut denied = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => {
                let after = body["result"]["windowSpendMsatsAfterPayment"]
                    .as_u64()
                    .unwrap();
                assert!(seen.insert(after), "two payers saw {after}");
            }
            StatusCode::FORBIDDEN => {
                assert_eq!(body["error"]["code"], "window_cap_exceeded", "{body}");
                denied += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let expected: BTreeSet<u64> = (1..=50).map(|k| 19_000 * k).collect();
    assert_eq!(seen, expected);
    assert_eq!(denied, 10);
    let ledger = app.ledger().await;
    assert!(ledger.reservations.is_empty());
    assert_eq!(
        ledger.window_spend(app.engine.now(), 300_000, None),
        950_000
    );
}

on_both_backends!(
    pays_once_and_retries_return_the_original_result,
    concurrent_requests_for_one_invoice_pay_it_once,
    the_window_cap_holds_under_concurrency,
    sixty_concurrent_payers_fill_the_window_exactly_and_each_sees_its_own_spend,
);

// --- policy ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cap_is_enforced_with_the_original_denial_shape() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let mut config = test_config();
    config.policy.caps.run_cap = Some(Msat(150_000));
    config.policy.caps.owner_window_cap = Some(Msat(250_000));
    let app = spawn_app(&db.database, &fake.config(), config).await;
    let invoice = fake.issue_invoice(100_000, "x");

    let (status, body) = app
        .pay_with(
            Some("deny-host"),
            json!({ "payment": { "invoice": invoice.payment_request, "maxAmountMsats": 100_000, "host": " Example.COM " } }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({ "ok": false, "error": { "requestId": "deny-host", "code": "host_not_allowed",
            "message": "host example.com is not in the wallet executor allowlist",
            "details": { "host": "example.com" } } })
    );

    let (status, body) = app
        .pay("deny-request-cap", &invoice.payment_request, 200_001)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "request_cap_exceeded");
    assert_eq!(
        body["error"]["details"],
        json!({ "host": "sats4ai.com", "maxAllowedMsats": 200_000 })
    );

    let (status, body) = app
        .pay("deny-quote", &invoice.payment_request, 99_999)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "quoted_amount_exceeds_cap");
    assert_eq!(
        body["error"]["details"],
        json!({ "host": "sats4ai.com", "maxAllowedMsats": 99_999, "quotedAmountMsats": 100_000 })
    );
    assert_eq!(fake.send_count(&invoice.payment_hash), 0);

    // Run cap: 150k per run.
    let pay_for = |run: &str, user: &str, invoice: &str, id: &str| {
        json!({ "requestId": id, "runId": run, "userId": user,
                "payment": { "invoice": invoice, "maxAmountMsats": 200_000, "host": "sats4ai.com" } })
    };
    let a = fake.issue_invoice(100_000, "a");
    let (status, _) = app
        .pay_with(None, pay_for("run_1", "u1", &a.payment_request, "run-a"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let b = fake.issue_invoice(60_000, "b");
    let (status, body) = app
        .pay_with(None, pay_for("run_1", "u2", &b.payment_request, "run-b"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "run_cap_exceeded");
    assert_eq!(body["error"]["requestId"], "run-b");
    assert_eq!(fake.send_count(&b.payment_hash), 0);
    // A denied request id keeps its answer.
    let (status, again) = app
        .pay_with(None, pay_for("run_1", "u2", &b.payment_request, "run-b"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(again, body);

    // Owner cap: 250k per owner per window (u1 already spent 100k).
    let c = fake.issue_invoice(100_000, "c");
    let (status, _) = app
        .pay_with(None, pay_for("run_2", "u1", &c.payment_request, "own-c"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let d = fake.issue_invoice(60_000, "d");
    let (status, body) = app
        .pay_with(None, pay_for("run_3", "u1", &d.payment_request, "own-d"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "owner_cap_exceeded");
    assert_eq!(body["error"]["details"]["windowSpendMsats"], 200_000);

    // The run's settled payments, for run receipts.
    let payments = lightning::run_payments::run_payments(
        &app.engine,
        &WalletId::parse(WALLET).unwrap(),
        &RunId::parse("run_1").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].payment_id, a.payment_hash);
    assert_eq!(payments[0].amount_msats, 100_000);
    assert!(payments[0].receipt_id.starts_with("lwr_"));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_fees_count_against_the_caps_and_the_fee_limit_is_reserved() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    fake.set_fee_msats(7_000);
    let mut config = test_config();
    config.policy.caps.window_cap = Msat(100_000);
    config.policy.caps.run_cap = Some(Msat(100_000));
    config.fee_limit = lightning::executor::FeeLimit {
        fixed_msats: 10_000,
        ppm: 0,
    };
    let app = spawn_app(&db.database, &fake.config(), config).await;
    let pay_for_run = |id: &str, invoice: &str| {
        json!({ "requestId": id, "runId": "run_fees", "userId": "9",
                "payment": { "invoice": invoice, "maxAmountMsats": 100_000, "host": "sats4ai.com" } })
    };

    // 85,000 + 10,000 fee limit = 95,000 reserved: fits. Settled: 85,000 + 7,000 fee.
    let first = fake.issue_invoice(85_000, "first");
    let (status, body) = app
        .pay_with(None, pay_for_run("fee-1", &first.payment_request))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["windowSpendMsatsAfterPayment"], 92_000);
    assert_eq!(app.status().await["status"]["windowSpendMsats"], 92_000);

    // 5,000 more would fit without fees (97,000), but its fee limit does not (92,000 + 15,000).
    let second = fake.issue_invoice(5_000, "second");
    let (status, body) = app
        .pay_with(None, pay_for_run("fee-2", &second.payment_request))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "window_cap_exceeded");
    assert_eq!(body["error"]["details"]["quotedAmountMsats"], 5_000);
    assert_eq!(body["error"]["details"]["windowSpendMsats"], 92_000);
    assert_eq!(body["error"]["details"]["windowCapMsats"], 100_000);
    assert_eq!(fake.send_count(&second.payment_hash), 0);

    // While a payment is in flight, its fee limit is held too.
    let mut wide = test_config();
    wide.policy.caps.window_cap = Msat(1_000_000);
    wide.response_wait = Duration::from_secs(1);
    wide.fee_limit = lightning::executor::FeeLimit {
        fixed_msats: 10_000,
        ppm: 0,
    };
    let db2 = TestDb::sqlite().await;
    let app2 = spawn_app(&db2.database, &fake.config(), wide).await;
    let slow = fake.issue_invoice(40_000, "slow");
    fake.set_behavior(&slow.payment_hash, Behavior::Hang);
    let (status, _) = app2.pay("slow-fee", &slow.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(app2.status().await["status"]["windowSpendMsats"], 50_000);
    fake.release(&slow.payment_hash, Behavior::succeed()).await;
    let mut settled = false;
    for _ in 0..100 {
        let (status, _) = app2.pay("slow-fee", &slow.payment_request, 50_000).await;
        if status == StatusCode::OK {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "the slow payment settled");
    assert_eq!(app2.status().await["status"]["windowSpendMsats"], 47_000);

    // The run's payments still report amount and fee apart.
    let payments = lightning::run_payments::run_payments(
        &app.engine,
        &WalletId::parse(WALLET).unwrap(),
        &RunId::parse("run_fees").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(
        (payments[0].amount_msats, payments[0].fee_msats),
        (85_000, 7_000)
    );
    db.cleanup().await;
    db2.cleanup().await;
}

// --- node outcomes --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_failure_releases_the_reservation_and_a_new_request_may_try_again() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let app = spawn_app(&db.database, &fake.config(), test_config()).await;
    let invoice = fake.issue_invoice(30_000, "flaky");
    fake.set_behavior(&invoice.payment_hash, Behavior::fail_no_route());
    let (status, body) = app.pay("fail-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "payment_failed");
    assert_eq!(
        body["error"]["details"]["failureReason"],
        "FAILURE_REASON_NO_ROUTE"
    );
    assert!(app.ledger().await.reservations.is_empty());
    assert_eq!(
        app.ledger()
            .await
            .window_spend(app.engine.now(), 300_000, None),
        0
    );
    // The same request id keeps its failure; a new one opens attempt 2.
    let (status, again) = app.pay("fail-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(again, body);
    fake.set_behavior(&invoice.payment_hash, Behavior::succeed());
    let (status, body) = app.pay("fail-2", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.send_count(&invoice.payment_hash), 2);
    let (payment, _) = app
        .engine
        .load::<Payment>(&invoice.payment_hash)
        .await
        .unwrap();
    assert_eq!(payment.attempts.len(), 2);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_payment_answers_pending_and_a_retry_returns_the_settlement() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let mut config = test_config();
    config.response_wait = Duration::from_millis(300);
    let app = spawn_app(&db.database, &fake.config(), config).await;
    let invoice = fake.issue_invoice(40_000, "slow");
    fake.set_behavior(&invoice.payment_hash, Behavior::Hang);
    let (status, body) = app.pay("slow-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "payment_pending");
    // While in flight, the reservation counts against the window.
    let status_body = app.status().await;
    assert_eq!(status_body["status"]["openReservations"], 1);
    // 40,000 + the 10,000 fee limit.
    assert_eq!(status_body["status"]["windowSpendMsats"], 50_000);
    let (status, _) = app.pay("slow-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    fake.release(&invoice.payment_hash, Behavior::succeed())
        .await;
    let mut last = Value::Null;
    for _ in 0..50 {
        let (status, body) = app.pay("slow-1", &invoice.payment_request, 50_000).await;
        if status == StatusCode::OK {
            last = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last["result"]["payment"]["preimageHex"],
        invoice.preimage_hex.as_str()
    );
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_payment_is_reconciled_with_track_payment() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let app = spawn_app(&db.database, &fake.config(), test_config()).await;
    let invoice = fake.issue_invoice(25_000, "cut");
    fake.set_behavior(
        &invoice.payment_hash,
        Behavior::CutStream {
            then: Box::new(Behavior::Succeed {
                after: Duration::from_millis(150),
            }),
        },
    );
    let (status, body) = app.pay("cut-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["payment"]["preimageHex"],
        invoice.preimage_hex.as_str()
    );
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    assert!(fake.calls("TrackPaymentV2") >= 1);
    let (payment, _) = app
        .engine
        .load::<Payment>(&invoice.payment_hash)
        .await
        .unwrap();
    // requested, reserved, reconcile_required, succeeded.
    assert_eq!(payment.version, 4);
    assert_eq!(
        payment.attempts[0].reconcile_reason.as_deref(),
        Some("payment stream broke: transport is closing")
    );
    db.cleanup().await;
}

// --- bad input ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invoices_and_requests_get_precise_errors_and_nothing_is_paid() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let app = spawn_app(&db.database, &fake.config(), test_config()).await;

    let expired = fake.issue_invoice_with(
        10_000,
        "old",
        chrono::Utc::now().timestamp() - 7200,
        3600,
        aggregates::payment::Network::Regtest,
    );
    let (status, body) = app.pay("bad-1", &expired.payment_request, 50_000).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invoice_expired"))
    );

    let mainnet = fake.issue_invoice_with(
        10_000,
        "wrong net",
        chrono::Utc::now().timestamp(),
        3600,
        aggregates::payment::Network::Mainnet,
    );
    let (status, body) = app.pay("bad-2", &mainnet.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invoice_network_mismatch");

    let (status, body) = app.pay("bad-3", "lnbcrt10u1pnotaninvoice", 50_000).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invoice_invalid");

    for raw in [
        "{not json",
        r#"{"payment":{"invoice":"x","maxAmountMsats":1,"host":"sats4ai.com","extra":1}}"#,
        r#"{"payment":{"invoice":"","maxAmountMsats":1,"host":"sats4ai.com"}}"#,
        r#"{"payment":{"invoice":"x","maxAmountMsats":-1,"host":"sats4ai.com"}}"#,
    ] {
        let response = app
            .http
            .post(format!("{}/pay-bolt11", app.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{raw}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{raw}");
    }
    let huge = "x".repeat(100_000);
    let response = app
        .http
        .post(format!("{}/pay-bolt11", app.base))
        .bearer_auth(TOKEN)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Auth: missing or wrong token is 401 with the original challenge; healthz needs none.
    for auth in [None, Some("Bearer nope"), Some("Basic dGVzdC10b2tlbg==")] {
        let mut request = app.http.get(format!("{}/status", app.base));
        if let Some(value) = auth {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"wallet-executor\""
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let response = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "hz-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "hz-1");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"ok": true, "ready": true, "requestId": "hz-1"})
    );

    let status = app.status().await;
    let s = &status["status"];
    assert_eq!(s["walletId"], WALLET);
    assert_eq!(s["authMode"], "bearer_static");
    assert_eq!(s["authEnforced"], true);
    assert_eq!(s["network"], "regtest");
    assert_eq!(
        s["identityPubkey"],
        lightning::testing::fake_lnd::FAKE_NODE_PUBKEY
    );
    assert_eq!(s["requestCapMsats"], 200_000);
    assert_eq!(s["windowCapMsats"], 1_000_000);
    assert_eq!(s["windowMs"], 300_000);
    assert_eq!(s["ready"], true);
    assert_eq!(s["allowedHostCount"], 2);
    assert!(app.executor.is_ready());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_macaroon_is_reported_without_leaking_it() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let bad = fake.config_with_bad_macaroon();
    let app = spawn_app(&db.database, &bad, test_config()).await;
    let invoice = fake.issue_invoice(10_000, "x");
    let (status, body) = app.pay("mac-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "node_unavailable");
    let text = body.to_string() + &app.status().await.to_string();
    assert!(!text.contains(&bad.macaroon_hex));
    assert!(!text.contains(&fake.config().macaroon_hex));
    assert_eq!(fake.send_count(&invoice.payment_hash), 0);
    db.cleanup().await;
}

// --- crash safety: a real child process killed mid-payment ---------------------------------------

const CHILD_ENV: &str = "OA_LN_CHILD";

/// The child side: runs the executor on the journal and fake LND the parent names, writes its port
/// to a file and serves until killed. Does nothing unless started by the crash test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the_runtime_killed_mid_payment_reconciles_and_never_pays_twice"]
async fn child_executor_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let database = Database::connect(&crate::child::database_config(&spec, 4))
        .await
        .unwrap();
    database.migrate().await.unwrap();
    let lnd = LndConfig {
        address: spec["lnd_address"].as_str().unwrap().to_owned(),
        tls_cert_pem: spec["lnd_cert"].as_str().unwrap().as_bytes().to_vec(),
        macaroon_hex: spec["lnd_macaroon"].as_str().unwrap().to_owned(),
    };
    let mut executor_config = test_config();
    executor_config.response_wait = Duration::from_secs(2);
    if let Some(ttl) = spec["lease_ttl_ms"].as_u64() {
        executor_config.lease_ttl = Duration::from_millis(ttl);
    }
    let app = spawn_app_unready(&database, &lnd, executor_config).await;
    let port_file = spec["port_file"].as_str().unwrap();
    std::fs::write(format!("{port_file}.tmp"), &app.base).unwrap();
    std::fs::rename(format!("{port_file}.tmp"), port_file).unwrap();
    std::future::pending::<()>().await;
}

pub(super) fn spawn_child(spec: &Value) -> std::process::Child {
    crate::child::spawn_test_process(
        "lightning::executor::child_executor_process",
        CHILD_ENV,
        spec,
        std::process::Stdio::null(),
    )
}

pub(super) async fn wait_for_port(path: &std::path::Path) -> String {
    for _ in 0..600 {
        if let Ok(base) = std::fs::read_to_string(path) {
            return base;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("child executor did not start");
}

/// What a child executor needs: the journal, the fake LND, and where to write its address.
pub(super) fn child_spec(db: &TestDb, lnd: &LndConfig, port_file: &std::path::Path) -> Value {
    let mut spec = crate::child::database_spec(db);
    spec["lnd_address"] = json!(lnd.address);
    spec["lnd_cert"] = json!(String::from_utf8(lnd.tls_cert_pem.clone()).unwrap());
    spec["lnd_macaroon"] = json!(lnd.macaroon_hex);
    spec["port_file"] = json!(port_file.to_str().unwrap());
    // A restarted executor takes the wallet over once the killed one's lease lapses.
    spec["lease_ttl_ms"] = json!(3_000);
    spec
}

/// `GET /healthz` of an executor: (HTTP status, `ready`).
pub(super) async fn healthz(base: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{base}/healthz")).await.unwrap();
    let status = response.status();
    (
        status,
        response.json::<Value>().await.unwrap()["ready"].clone(),
    )
}

/// Waits until the executor at `base` says it is ready.
pub(super) async fn wait_ready(base: &str) {
    for _ in 0..600 {
        if healthz(base).await.0 == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the executor at {base} did not become ready");
}

async fn the_runtime_killed_mid_payment_reconciles_and_never_pays_twice(db: &TestDb) {
    let fake = FakeLnd::start().await;
    let invoice = fake.issue_invoice(70_000, "crash");
    fake.set_behavior(&invoice.payment_hash, Behavior::Hang);
    let dir = tempfile::tempdir().unwrap();
    let lnd = fake.config();
    let spec_for = |n: u32| child_spec(db, &lnd, &dir.path().join(format!("port-{n}")));
    let http = reqwest::Client::new();
    let pay = |base: String, id: &'static str| {
        let http = http.clone();
        let pr = invoice.payment_request.clone();
        async move {
            http.post(format!("{base}/pay-bolt11"))
                .bearer_auth(TOKEN)
                .header("x-request-id", id)
                .json(&json!({ "payment": { "invoice": pr, "maxAmountMsats": 100_000, "host": "sats4ai.com" } }))
                .send()
                .await
        }
    };

    let spec1 = spec_for(1);
    let mut child = spawn_child(&spec1);
    let base = wait_for_port(&dir.path().join("port-1")).await;
    wait_ready(&base).await;
    let in_flight = tokio::spawn(pay(base.clone(), "crash-1"));
    for _ in 0..400 {
        if fake.send_count(&invoice.payment_hash) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        fake.send_count(&invoice.payment_hash),
        1,
        "the child sent the payment"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = in_flight.await;
    // LND settles the payment while the runtime is dead.
    fake.release(&invoice.payment_hash, Behavior::succeed())
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut child = spawn_child(&spec_for(2));
    let base = wait_for_port(&dir.path().join("port-2")).await;
    let mut settled = None;
    for _ in 0..100 {
        let response = pay(base.clone(), "crash-1").await.unwrap();
        if response.status() == StatusCode::OK {
            settled = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = settled.expect("the retry after restart returns the settlement");
    assert_eq!(
        settled["result"]["payment"]["preimageHex"],
        invoice.preimage_hex.as_str()
    );
    wait_ready(&base).await;
    let other = pay(base.clone(), "crash-2").await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    let other: Value = other.json().await.unwrap();
    assert_eq!(
        other["result"]["payment"]["paymentId"],
        invoice.payment_hash.as_str()
    );
    assert_eq!(
        fake.send_count(&invoice.payment_hash),
        1,
        "never paid twice"
    );
    assert!(
        fake.calls("TrackPaymentV2") >= 1,
        "reconciled through TrackPaymentV2"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let engine = engine_for(&db.database);
    let (ledger, _) = engine.load::<SpendLedger>(WALLET).await.unwrap();
    assert!(ledger.reservations.is_empty());
    assert_eq!(ledger.recent.len(), 1);
}

/// After a SIGKILL with a payment held in flight, the restarted executor is not ready — `/healthz`
/// and `/status` say so and new payments get `503 executor_not_ready` — until that payment is
/// tracked with its reservation held (here: until LND is reachable again).
async fn after_a_sigkill_the_executor_is_not_ready_until_the_held_payment_is_tracked(db: &TestDb) {
    let fake = FakeLnd::start().await;
    let held = fake.issue_invoice(80_000, "held");
    fake.set_behavior(&held.payment_hash, Behavior::Hang);
    let unrelated = fake.issue_invoice(10_000, "unrelated");
    let dir = tempfile::tempdir().unwrap();
    let lnd = fake.config();
    let http = reqwest::Client::new();
    let pay = |base: String, id: &'static str, invoice: String| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("{base}/pay-bolt11"))
                .bearer_auth(TOKEN)
                .header("x-request-id", id)
                .json(&json!({ "payment": { "invoice": invoice, "maxAmountMsats": 100_000, "host": "sats4ai.com" } }))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let status_of = |base: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/status"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    let mut child = spawn_child(&child_spec(db, &lnd, &dir.path().join("port-1")));
    let base = wait_for_port(&dir.path().join("port-1")).await;
    wait_ready(&base).await;
    let in_flight = tokio::spawn(pay(base.clone(), "held-1", held.payment_request.clone()));
    for _ in 0..400 {
        if fake.send_count(&held.payment_hash) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.send_count(&held.payment_hash), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = in_flight.await;

    // Restart while LND cannot be reached: the held payment cannot be tracked yet.
    fake.go_down();
    let mut child = spawn_child(&child_spec(db, &lnd, &dir.path().join("port-2")));
    let base = wait_for_port(&dir.path().join("port-2")).await;
    for _ in 0..5 {
        let (code, ready) = healthz(&base).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ready, false);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = status_of(base.clone()).await;
    assert_eq!(status["status"]["ready"], false, "{status}");
    assert_eq!(status["status"]["openReservations"], 1);
    let (code, body) = pay(base.clone(), "other-1", unrelated.payment_request.clone()).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "executor_not_ready");
    assert_eq!(fake.send_count(&unrelated.payment_hash), 0);

    // LND is back: the held payment is tracked (still in flight, reservation held) -> ready.
    fake.come_back().await;
    wait_ready(&base).await;
    let status = status_of(base.clone()).await;
    assert_eq!(status["status"]["ready"], true, "{status}");
    assert_eq!(status["status"]["openReservations"], 1);
    assert!(status["status"]["windowSpendMsats"].as_u64().unwrap() >= 80_000);
    let (code, body) = pay(base.clone(), "other-1", unrelated.payment_request.clone()).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // LND settles the held payment: the retry returns it; it was sent once.
    fake.release(&held.payment_hash, Behavior::succeed()).await;
    let mut settled = Value::Null;
    for _ in 0..100 {
        let (code, body) = pay(base.clone(), "held-1", held.payment_request.clone()).await;
        if code == StatusCode::OK {
            settled = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        settled["result"]["payment"]["preimageHex"],
        held.preimage_hex.as_str()
    );
    assert_eq!(fake.send_count(&held.payment_hash), 1);
    child.kill().unwrap();
    child.wait().unwrap();
}

mod crash {
    use super::*;
    on_both_backends!(
        the_runtime_killed_mid_payment_reconciles_and_never_pays_twice,
        after_a_sigkill_the_executor_is_not_ready_until_the_held_payment_is_tracked,
    );
}

// --- crash before sending: the reservation is held, LND never saw the payment ---------------------

/// Writes what a process that died between reserving and SendPaymentV2 leaves in the journal:
/// request `lost-1` for `invoice`, its attempt reserved, nothing sent.
pub(super) async fn seed_reserved_but_unsent(
    database: &Database,
    invoice: &lightning::testing::FakeInvoice,
    config: &ExecutorConfig,
) {
    use aggregates::payment::{
        DecodedInvoice, Network, PaymentCommand, PaymentHash, PaymentRequest, SpendLedgerCommand,
    };
    use engine::CommandContext;

    let engine = engine_for(database);
    let hash = PaymentHash::parse(&invoice.payment_hash).unwrap();
    let context = CommandContext::system("test");
    let request = PaymentRequest {
        request_id: "lost-1".into(),
        fingerprint: lightning::executor::service::request_fingerprint(
            WALLET,
            "sats4ai.com",
            &aggregates::payment::types::sha256_hex(&invoice.payment_request),
            100_000,
        ),
        wallet_id: WalletId::parse(WALLET).unwrap(),
        host: "sats4ai.com".into(),
        invoice: invoice.payment_request.clone(),
        invoice_hash: aggregates::payment::types::sha256_hex(&invoice.payment_request),
        decoded: DecodedInvoice {
            payment_hash: hash.clone(),
            destination: "02".into(),
            amount_msats: Msat(60_000),
            created_at_unix: chrono::Utc::now().timestamp(),
            expiry_secs: 3600,
            description: String::new(),
        },
        network: Network::Regtest,
        max_amount_msats: Msat(100_000),
        fee_limit_msats: Msat(1_000),
        run_id: None,
        owner: None,
    };
    let mut idem = context.clone();
    idem.idempotency = Some(engine::IdempotencyRequest {
        scope: format!("lightning:{WALLET}"),
        key: "lost-1".into(),
        request_hash: request.fingerprint.clone(),
    });
    engine
        .execute::<Payment>(
            hash.as_str(),
            PaymentCommand::RequestPayment(Box::new(request)),
            &idem,
        )
        .await
        .unwrap();
    engine
        .execute::<SpendLedger>(
            WALLET,
            SpendLedgerCommand::ReserveSpend {
                payment_hash: hash.clone(),
                attempt: 1,
                amount_msats: Msat(60_000),
                host: "sats4ai.com".into(),
                run_id: None,
                owner: None,
                caps: config.policy.caps.clone(),
            },
            &context,
        )
        .await
        .unwrap();
    engine
        .execute::<Payment>(
            hash.as_str(),
            PaymentCommand::RecordReservation {
                attempt: 1,
                window_spend_before_msats: 0,
            },
            &context,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_interrupted_before_sending_is_failed_as_not_sent_and_released_on_restart() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let invoice = fake.issue_invoice(60_000, "interrupted");
    let config = test_config();
    seed_reserved_but_unsent(&db.database, &invoice, &config).await;

    // The restarted executor reconciles it before anything else: LND never saw it.
    let app = spawn_app(&db.database, &fake.config(), config).await;
    let (status, body) = app.pay("lost-1", &invoice.payment_request, 100_000).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["details"]["failureReason"], "not_sent");
    assert!(app.ledger().await.reservations.is_empty());
    assert_eq!(fake.send_count(&invoice.payment_hash), 0);
    // A new request id pays it (attempt 2), once.
    let (status, body) = app.pay("lost-2", &invoice.payment_request, 100_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    let status = app.status().await;
    assert_eq!(
        status["status"]["lastPaymentId"],
        invoice.payment_hash.as_str()
    );
    assert_eq!(status["status"]["recentPaymentsCount"], 1);
    db.cleanup().await;
}

// --- the serve flags the composition root flattens -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flags_start_the_executor_and_the_gateway_on_their_own_listeners() {
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        lightning: lightning::cli::LightningServeArgs,
    }

    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.cert");
    std::fs::write(&cert, fake.config().tls_cert_pem).unwrap();
    let macaroon = dir.path().join("admin.macaroon");
    std::fs::write(&macaroon, hex::decode(fake.config().macaroon_hex).unwrap()).unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let args = Serve::parse_from([
        "serve",
        "--wallet-executor",
        "--l402-gateway",
        "--lnd-address",
        &fake.addr().to_string(),
        "--lnd-tls-cert",
        cert.to_str().unwrap(),
        "--lnd-macaroon",
        macaroon.to_str().unwrap(),
        "--wallet-executor-token",
        TOKEN,
        "--wallet-executor-listen",
        "127.0.0.1:0",
        "--l402-gateway-listen",
        "127.0.0.1:0",
        "--l402-ops-token",
        "ops",
        "--l402-root-key-file",
        &path("root.key"),
        "--l402-state-file",
        &path("gateway.json"),
    ]);
    let shutdown = CancellationToken::new();
    let services =
        lightning::cli::start(args.lightning, engine_for(&db.database), shutdown.clone())
            .await
            .unwrap();
    let http = reqwest::Client::new();
    let executor = format!("http://{}", services.executor_addr.unwrap());
    let gateway = format!("http://{}", services.gateway_addr.unwrap());
    let status: Value = http
        .get(format!("{executor}/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"]["network"], "regtest");
    assert_eq!(status["status"]["walletId"], "openagents-ep212");
    let deployment: Value = http
        .get(format!("{gateway}/ops/deployment"))
        .bearer_auth("ops")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deployment, json!({ "ok": true, "deployment": null }));
    assert_eq!(
        std::fs::read(dir.path().join("root.key")).unwrap().len(),
        32
    );
    shutdown.cancel();
    services.wait().await.unwrap();
    db.cleanup().await;
}

// --- benchmark harness (not a test: prints numbers; run in release) -------------------------------

/// Payments per second through the executor (HTTP → journal → gRPC/TLS → fake LND → journal) against
/// a raw baseline measured in the same run: SendPaymentV2 straight to the same fake LND through the
/// same client. Run with
/// `cargo test --release --test it lightning::executor::bench_payments -- --ignored --nocapture`
/// (`OA_BENCH_PAYMENTS`, default 300; PostgreSQL when reachable, else SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark harness; prints numbers"]
async fn bench_payments() {
    use aggregates::payment::services::{LightningNode, SendRequest};

    let count: usize = std::env::var("OA_BENCH_PAYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let fake = FakeLnd::start().await;
    fake.set_default_behavior(Behavior::Succeed {
        after: Duration::ZERO,
    });
    let concurrency = 8;

    // Baseline: the node alone.
    let node = Arc::new(LndNode::connect(&fake.config()).await.unwrap());
    let invoices: Vec<_> = (0..count)
        .map(|i| fake.issue_invoice(1_000, &format!("raw {i}")))
        .collect();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for chunk in invoices.chunks(count.div_ceil(concurrency)) {
        let node = node.clone();
        let chunk: Vec<String> = chunk.iter().map(|i| i.payment_request.clone()).collect();
        tasks.push(tokio::spawn(async move {
            for invoice in chunk {
                let mut updates = node
                    .send(SendRequest {
                        invoice,
                        fee_limit_msats: Msat(1_000),
                        timeout_secs: 60,
                    })
                    .await
                    .unwrap();
                while let Some(update) = updates.next().await {
                    if update.unwrap().is_final() {
                        break;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let raw = started.elapsed();

    for backend in ["postgres", "sqlite"] {
        let db = match backend {
            "postgres" => match TestDb::postgres().await {
                Some(db) => db,
                None => continue,
            },
            _ => TestDb::sqlite().await,
        };
        let mut config = test_config();
        config.policy.caps.window_cap = Msat(u64::MAX / 2);
        let app = Arc::new(spawn_app(&db.database, &fake.config(), config).await);
        let invoices: Vec<_> = (0..count)
            .map(|i| fake.issue_invoice(1_000, &format!("ex {i}")))
            .collect();
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for (n, chunk) in invoices.chunks(count.div_ceil(concurrency)).enumerate() {
            let app = app.clone();
            let chunk: Vec<String> = chunk.iter().map(|i| i.payment_request.clone()).collect();
            tasks.push(tokio::spawn(async move {
                for (i, invoice) in chunk.iter().enumerate() {
                    let (status, body) = app.pay(&format!("bench-{n}-{i}"), invoice, 200_000).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let through = started.elapsed();
        println!(
            "lightning bench ({backend}): {count} payments, concurrency {concurrency}: executor {:.0}/s \
             ({:.2} ms each), raw SendPaymentV2 {:.0}/s; executor/raw time ratio {:.1}x",
            count as f64 / through.as_secs_f64(),
            through.as_secs_f64() * 1000.0 / count as f64,
            count as f64 / raw.as_secs_f64(),
            through.as_secs_f64() / raw.as_secs_f64()
        );
        drop(app);
        db.cleanup().await;
    }
}

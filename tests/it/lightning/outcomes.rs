//! What the executor answers for each thing LND can do, decided by what is known: every row of the
//! table in docs/lightning.md ("What the executor knows") against the fake LND over gRPC/TLS —
//! SendPaymentV2 answers (refusals before a payment exists fail; unknown outcomes keep the
//! reservation and are followed with TrackPaymentV2), "LND accepts then dies", and node trouble on
//! DecodePayReq/GetInfo (unreachable, macaroon refused) at any time in the executor's life.

use std::time::Duration;

use aggregates::payment::Payment;
use engine::testing::TestDb;
use lightning::testing::{Behavior, FakeLnd, GrpcCode as Code, SendFault};
use reqwest::StatusCode;
use serde_json::Value;

use super::executor::{spawn_app, test_config, App};

/// Retries `request_id` until the answer is no longer `504 payment_pending` / `503`.
async fn pay_until_final(
    app: &App,
    request_id: &str,
    invoice: &str,
    max: u64,
) -> (StatusCode, Value) {
    for _ in 0..200 {
        let (status, body) = app.pay(request_id, invoice, max).await;
        if status != StatusCode::GATEWAY_TIMEOUT && status != StatusCode::SERVICE_UNAVAILABLE {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{request_id} never got a final answer");
}

async fn window_spend(app: &App) -> u64 {
    app.ledger()
        .await
        .window_spend(app.engine.now(), 300_000, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lnd_accepts_then_dies_and_the_payment_is_followed_until_it_settles() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let mut config = test_config();
    config.response_wait = Duration::from_millis(800);
    let app = spawn_app(&db.database, &fake.config(), config).await;
    let invoice = fake.issue_invoice(51_000, "accepted then gone");
    fake.set_behavior(&invoice.payment_hash, Behavior::Hang);
    fake.set_send_fault(SendFault::AcceptThenDie);

    let (status, body) = app.pay("die-1", &invoice.payment_request, 60_000).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "payment_pending");
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    // LND is gone: the answer stays "pending", never "failed", and the reservation is held.
    for _ in 0..3 {
        let (status, body) = app.pay("die-1", &invoice.payment_request, 60_000).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    }
    let ledger = app.ledger().await;
    assert_eq!(ledger.reservations.len(), 1, "the reservation is held");
    let held = window_spend(&app).await;
    assert!(held >= 51_000, "the held reservation counts: {held}");
    let status = app.status().await;
    assert_eq!(status["status"]["nodeCause"], "unreachable", "{status}");
    assert_eq!(status["status"]["ready"], false);

    // LND comes back and settles the payment it had accepted.
    fake.come_back().await;
    fake.release(&invoice.payment_hash, Behavior::succeed())
        .await;
    let (status, body) = pay_until_final(&app, "die-1", &invoice.payment_request, 60_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["payment"]["preimageHex"],
        invoice.preimage_hex.as_str()
    );
    // The window spend counts what LND paid; the reservation is gone.
    let ledger = app.ledger().await;
    assert!(ledger.reservations.is_empty());
    assert_eq!(window_spend(&app).await, 51_000);
    let status = app.status().await;
    assert_eq!(status["status"]["windowSpendMsats"], 51_000);
    assert_eq!(status["status"]["nodeCause"], Value::Null);
    // A new request id for the invoice gets the same payment; LND saw one send.
    let (status, other) = app.pay("die-2", &invoice.payment_request, 60_000).await;
    assert_eq!(status, StatusCode::OK, "{other}");
    assert_eq!(
        other["result"]["payment"]["paymentId"],
        invoice.payment_hash.as_str()
    );
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    assert!(fake.calls("TrackPaymentV2") >= 1);
    db.cleanup().await;
}

/// How a SendPaymentV2 answer must end.
#[derive(Debug)]
enum Expect {
    /// The outcome was unknown: followed with TrackPaymentV2 to LND's settlement.
    SettledAfterTracking,
    /// A refusal or a payment LND never saw: `502 payment_failed` with this reason, released.
    Failed(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_send_payment_answer_is_classified_by_what_is_known() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let app = spawn_app(&db.database, &fake.config(), test_config()).await;
    let rows: Vec<(Code, &str, bool, Expect)> = vec![
        // Outcome unknown, and LND had the payment: keep the reservation, track, settle.
        (
            Code::Unknown,
            "client error (SendRequest)",
            true,
            Expect::SettledAfterTracking,
        ),
        (
            Code::Unknown,
            "something LND never said before",
            true,
            Expect::SettledAfterTracking,
        ),
        (
            Code::Internal,
            "htlc switch crashed",
            true,
            Expect::SettledAfterTracking,
        ),
        (
            Code::Unavailable,
            "transport is closing",
            true,
            Expect::SettledAfterTracking,
        ),
        (
            Code::DeadlineExceeded,
            "deadline exceeded",
            true,
            Expect::SettledAfterTracking,
        ),
        (
            Code::AlreadyExists,
            "payment is in transition",
            true,
            Expect::SettledAfterTracking,
        ),
        // Outcome unknown, but LND never registered it: TrackPaymentV2 says NotFound (after the
        // grace), so it was not sent.
        (
            Code::Unknown,
            "client error (SendRequest)",
            false,
            Expect::Failed("not_sent"),
        ),
        (
            Code::Internal,
            "db closed",
            false,
            Expect::Failed("not_sent"),
        ),
        // LND's explicit refusals before a payment exists.
        (
            Code::InvalidArgument,
            "invalid payment request: checksum failed",
            false,
            Expect::Failed("rejected_by_node"),
        ),
        (
            Code::Unknown,
            "invoice expired. Valid until 2026-01-01 00:00:00 +0000 UTC",
            false,
            Expect::Failed("rejected_by_node"),
        ),
        (
            Code::Unknown,
            "permission denied",
            false,
            Expect::Failed("node_auth_refused"),
        ),
        (
            Code::Unknown,
            "verification failed: signature mismatch after caveat verification",
            false,
            Expect::Failed("node_auth_refused"),
        ),
    ];
    for (n, (code, message, registered, expect)) in rows.into_iter().enumerate() {
        let row = format!("row {n}: {code:?} {message:?} registered={registered}");
        let invoice = fake.issue_invoice(10_000 + n as u64, &row);
        fake.set_behavior(
            &invoice.payment_hash,
            Behavior::Succeed {
                after: Duration::from_millis(100),
            },
        );
        fake.set_send_fault(SendFault::Status {
            code,
            message: message.to_owned(),
            registered,
        });
        let request_id = format!("row-{n}");
        let (status, body) =
            pay_until_final(&app, &request_id, &invoice.payment_request, 50_000).await;
        assert_eq!(fake.send_count(&invoice.payment_hash), 1, "{row}");
        let (payment, _) = app
            .engine
            .load::<Payment>(&invoice.payment_hash)
            .await
            .unwrap();
        match expect {
            Expect::SettledAfterTracking => {
                assert_eq!(status, StatusCode::OK, "{row}: {body}");
                assert_eq!(
                    body["result"]["payment"]["preimageHex"],
                    invoice.preimage_hex.as_str(),
                    "{row}"
                );
                assert!(
                    payment.attempts[0].reconcile_reason.is_some(),
                    "{row}: went through reconcile"
                );
            }
            Expect::Failed(reason) => {
                assert_eq!(status, StatusCode::BAD_GATEWAY, "{row}: {body}");
                assert_eq!(body["error"]["code"], "payment_failed", "{row}");
                assert_eq!(body["error"]["details"]["failureReason"], reason, "{row}");
                assert!(
                    fake.payment_status(&invoice.payment_hash).is_none(),
                    "{row}"
                );
            }
        }
        assert!(
            app.ledger().await.reservations.is_empty(),
            "{row}: nothing left reserved"
        );
        // The same request id keeps its answer.
        let (again_status, again) = app.pay(&request_id, &invoice.payment_request, 50_000).await;
        assert_eq!((again_status, &again), (status, &body), "{row}");
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_trouble_on_decode_or_info_is_node_unavailable_at_any_time() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let mut config = test_config();
    config.node_call_timeout = Duration::from_secs(3);
    let app = spawn_app(&db.database, &fake.config(), config).await;
    // The executor has talked to the node (network known, one payment made).
    let first = fake.issue_invoice(10_000, "first");
    let (status, body) = app.pay("ok-1", &first.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Unreachable.
    fake.go_down();
    let invoice = fake.issue_invoice(10_000, "while down");
    let (status, body) = app.pay("down-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "node_unavailable");
    let status = app.status().await;
    assert_eq!(status["status"]["lifecycle"], "error");
    assert_eq!(status["status"]["nodeCause"], "unreachable", "{status}");
    assert_eq!(status["status"]["ready"], false);
    assert!(status["status"]["lastErrorMessage"]
        .as_str()
        .unwrap()
        .starts_with("node unreachable"));

    // Back, but the macaroon is refused, in LND's words (sent as Unknown).
    fake.come_back().await;
    for refusal in [
        "permission denied",
        "verification failed: signature mismatch after caveat verification",
    ] {
        fake.refuse_auth(Some(refusal));
        let (status, body) = app.pay("auth-1", &invoice.payment_request, 50_000).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{refusal}: {body}");
        assert_eq!(body["error"]["code"], "node_unavailable");
        let status = app.status().await;
        assert_eq!(
            status["status"]["nodeCause"], "auth_refused",
            "{refusal}: {status}"
        );
        assert!(!status.to_string().contains(&fake.config().macaroon_hex));
    }

    // Healthy again: a bad invoice is the invoice's fault, and the pending one pays.
    fake.refuse_auth(None);
    let (status, body) = app.pay("bad-1", "lnbcrt10u1pnotaninvoice", 50_000).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invoice_invalid");
    let (status, body) = app.pay("down-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = app.status().await;
    assert_eq!(status["status"]["lifecycle"], "connected");
    assert_eq!(status["status"]["nodeCause"], Value::Null);
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_lnd_never_answers_is_an_unknown_outcome_and_is_tracked() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let mut config = test_config();
    config.node_call_timeout = Duration::from_millis(700);
    let app = spawn_app(&db.database, &fake.config(), config).await;
    let invoice = fake.issue_invoice(12_000, "stalled");
    fake.set_behavior(
        &invoice.payment_hash,
        Behavior::Succeed {
            after: Duration::from_millis(1_500),
        },
    );
    fake.set_send_fault(SendFault::AcceptThenStall {
        for_: Duration::from_secs(30),
    });
    let (status, body) = pay_until_final(&app, "stall-1", &invoice.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["payment"]["preimageHex"],
        invoice.preimage_hex.as_str()
    );
    let (payment, _) = app
        .engine
        .load::<Payment>(&invoice.payment_hash)
        .await
        .unwrap();
    assert!(payment.attempts[0]
        .reconcile_reason
        .as_deref()
        .unwrap()
        .contains("did not answer"));
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);
    assert!(app.ledger().await.reservations.is_empty());
    db.cleanup().await;
}

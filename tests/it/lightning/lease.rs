//! One executor per wallet, enforced by the wallet lease (`lightning_executor_leases`): an
//! executor that does not hold its wallet's lease is not ready, sends nothing, tracks nothing and
//! releases no reservation — in particular not a reservation whose payment another executor is
//! about to send — and takes over when the holder dies. In process against a held lease row, and
//! with two real executor processes sharing the journal (the holder SIGKILLed); both journals.

use std::time::Duration;

use engine::testing::TestDb;
use engine::Database;
use lightning::testing::{Behavior, FakeLnd};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::executor::{
    child_spec, healthz, seed_reserved_but_unsent, spawn_app_unready, spawn_child, test_config,
    wait_for_port, wait_ready, App, TOKEN, WALLET,
};
use crate::support::on_both_backends;

async fn set_foreign_lease(database: &Database, expires_at_ms: i64) {
    let sql = "INSERT INTO lightning_executor_leases (wallet_id, holder, epoch, expires_at_ms, updated_at_ms)
               VALUES ($1, 'executor-elsewhere', 1, $2, 0)
               ON CONFLICT (wallet_id) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms";
    match database {
        Database::Postgres(pool) => {
            sqlx::query(sql)
                .bind(WALLET)
                .bind(expires_at_ms)
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Sqlite { pool, .. } => {
            sqlx::query(sql)
                .bind(WALLET)
                .bind(expires_at_ms)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn pay_until_final(app: &App, request_id: &str, invoice: &str) -> (StatusCode, Value) {
    for _ in 0..200 {
        let (status, body) = app.pay(request_id, invoice, 100_000).await;
        if status != StatusCode::GATEWAY_TIMEOUT && status != StatusCode::SERVICE_UNAVAILABLE {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{request_id} never got a final answer");
}

async fn an_executor_without_the_lease_releases_nothing_and_takes_over_when_it_is_free(
    db: &TestDb,
) {
    let fake = FakeLnd::start().await;
    let invoice = fake.issue_invoice(60_000, "reserved elsewhere");
    let mut config = test_config();
    config.lease_ttl = Duration::from_millis(3_000);
    // Another executor reserved this payment and is about to send it; it holds the wallet.
    seed_reserved_but_unsent(&db.database, &invoice, &config).await;
    let far = chrono::Utc::now().timestamp_millis() + 3_600_000;
    set_foreign_lease(&db.database, far).await;

    let app = spawn_app_unready(&db.database, &fake.config(), config).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(healthz(&app.base).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let status = app.status().await;
    assert_eq!(status["status"]["leaseHeld"], false, "{status}");
    assert_eq!(status["status"]["ready"], false);
    let (code, body) = app.pay("lost-1", &invoice.payment_request, 100_000).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "executor_not_ready");
    let other = fake.issue_invoice(1_000, "new");
    let (code, _) = app.pay("new-1", &other.payment_request, 100_000).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    // Well past the not-found grace: the other executor's reservation is untouched, and this
    // one neither tracked nor sent anything.
    assert_eq!(app.ledger().await.reservations.len(), 1);
    assert_eq!(fake.calls("TrackPaymentV2"), 0);
    assert_eq!(fake.calls("SendPaymentV2"), 0);

    // The holder's lease lapses: this executor takes the wallet over and reconciles.
    set_foreign_lease(&db.database, 0).await;
    wait_ready(&app.base).await;
    let (code, body) = pay_until_final(&app, "lost-1", &invoice.payment_request).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["details"]["failureReason"], "not_sent");
    assert!(app.ledger().await.reservations.is_empty());
    let status = app.status().await;
    assert_eq!(status["status"]["leaseHeld"], true);
}

async fn two_executor_processes_share_a_wallet_one_at_a_time(db: &TestDb) {
    let fake = FakeLnd::start().await;
    let held = fake.issue_invoice(70_000, "held by the first");
    fake.set_behavior(&held.payment_hash, Behavior::Hang);
    let fresh = fake.issue_invoice(5_000, "fresh");
    let dir = tempfile::tempdir().unwrap();
    let lnd = fake.config();
    let spec = |n: u32| child_spec(db, &lnd, &dir.path().join(format!("port-{n}")));
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

    let mut first = spawn_child(&spec(1));
    let first_base = wait_for_port(&dir.path().join("port-1")).await;
    wait_ready(&first_base).await;
    let in_flight = tokio::spawn(pay(
        first_base.clone(),
        "held-1",
        held.payment_request.clone(),
    ));
    for _ in 0..400 {
        if fake.send_count(&held.payment_hash) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.send_count(&held.payment_hash), 1);

    // A second process on the same journal: not ready while the first holds the wallet.
    let mut second = spawn_child(&spec(2));
    let second_base = wait_for_port(&dir.path().join("port-2")).await;
    for _ in 0..8 {
        assert_eq!(
            healthz(&second_base).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(healthz(&first_base).await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, body) = pay(second_base.clone(), "held-1", held.payment_request.clone()).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (code, body) = pay(
        second_base.clone(),
        "fresh-1",
        fresh.payment_request.clone(),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "executor_not_ready");
    assert_eq!(fake.send_count(&fresh.payment_hash), 0);

    // The first dies (SIGKILL): the second takes the wallet over after the lease's TTL, follows
    // the held payment and takes new ones.
    first.kill().unwrap();
    first.wait().unwrap();
    let _ = in_flight.await;
    wait_ready(&second_base).await;
    fake.release(&held.payment_hash, Behavior::succeed()).await;
    let mut settled = Value::Null;
    for _ in 0..100 {
        let (code, body) = pay(second_base.clone(), "held-1", held.payment_request.clone()).await;
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
    let (code, body) = pay(
        second_base.clone(),
        "fresh-1",
        fresh.payment_request.clone(),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(fake.send_count(&held.payment_hash), 1);
    assert_eq!(fake.send_count(&fresh.payment_hash), 1);
    second.kill().unwrap();
    second.wait().unwrap();
}

on_both_backends!(
    an_executor_without_the_lease_releases_nothing_and_takes_over_when_it_is_free,
    two_executor_processes_share_a_wallet_one_at_a_time,
);

//! `/pay-bolt11`'s answer, field by field, as docs/lightning.md documents it: the success shape,
//! the error shape, the request id's sources, the receipt a second request id gets for an
//! already-paid invoice, the window spend after a payment (settled spend only), the request-cap
//! denial's details, and `405` with the JSON error shape for other methods.

use std::time::Duration;

use aggregates::payment::types::sha256_hex;
use engine::testing::TestDb;
use lightning::testing::{Behavior, FakeLnd};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::executor::{spawn_app, test_config, TOKEN, WALLET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_field_of_the_success_answer() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    fake.set_fee_msats(5);
    let mut config = test_config();
    // Long enough for a payment under load; the Hang below answers 504 after it.
    config.response_wait = Duration::from_secs(2);
    let app = spawn_app(&db.database, &fake.config(), config).await;

    // An earlier settled payment (counts) and another request's open reservation (does not).
    let earlier = fake.issue_invoice(20_000, "earlier");
    let (status, _) = app.pay("earlier-1", &earlier.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::OK);
    let open = fake.issue_invoice(30_000, "open");
    fake.set_behavior(&open.payment_hash, Behavior::Hang);
    let (status, _) = app.pay("open-1", &open.payment_request, 50_000).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(app.ledger().await.reservations.len(), 1);

    let invoice = fake.issue_invoice(40_000, "fields");
    let before = chrono::Utc::now().timestamp_millis();
    // The request id from the body (no header).
    let response = app
        .http
        .post(format!("{}/pay-bolt11", app.base))
        .bearer_auth(TOKEN)
        .json(&json!({ "requestId": "body-id-1",
                       "payment": { "invoice": invoice.payment_request, "maxAmountMsats": 45_000,
                                    "host": "  SATS4AI.com " } }))
        .send()
        .await
        .unwrap();
    let after = chrono::Utc::now().timestamp_millis();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "body-id-1");
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value = response.json().await.unwrap();
    let top: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, ["ok", "requestId", "result"]);
    assert_eq!(body["ok"], true);
    assert_eq!(body["requestId"], "body-id-1");
    let result = &body["result"];
    let keys: Vec<&str> = result
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "requestId",
            "walletId",
            "payment",
            "quotedAmountMsats",
            "windowSpendMsatsAfterPayment",
            "receipt"
        ]
    );
    assert_eq!(result["requestId"], "body-id-1");
    assert_eq!(result["walletId"], WALLET);
    let payment = &result["payment"];
    assert_eq!(payment["paymentId"], invoice.payment_hash.as_str());
    assert_eq!(payment["amountMsats"], 40_000);
    assert_eq!(payment["preimageHex"], invoice.preimage_hex.as_str());
    let paid_at = payment["paidAtMs"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&paid_at),
        "{before} <= {paid_at} <= {after}"
    );
    assert_eq!(result["quotedAmountMsats"], 40_000);
    // Settled spend in the window after this payment: the earlier one and this one, each with
    // its routing fee, not the other request's open reservation.
    assert_eq!(
        result["windowSpendMsatsAfterPayment"],
        20_000 + 5 + 40_000 + 5
    );
    let receipt = &result["receipt"];
    assert_eq!(
        receipt["receiptVersion"],
        "openagents.lightning.wallet_receipt.v1"
    );
    assert_eq!(receipt["requestId"], "body-id-1");
    assert_eq!(receipt["walletId"], WALLET);
    assert_eq!(receipt["host"], "sats4ai.com", "trimmed and lowercased");
    assert_eq!(receipt["paymentId"], invoice.payment_hash.as_str());
    assert_eq!(
        receipt["invoiceHash"],
        sha256_hex(&invoice.payment_request).as_str()
    );
    assert_eq!(receipt["quotedAmountMsats"], 40_000);
    assert_eq!(receipt["settledAmountMsats"], 40_000);
    assert_eq!(
        receipt["preimageSha256"],
        sha256_hex(&invoice.preimage_hex).as_str()
    );
    assert_eq!(receipt["paidAtMs"], paid_at);
    assert_eq!(receipt["rail"], "lightning");
    assert_eq!(receipt["assetId"], "BTC_LN");
    let canonical = receipt["canonicalJsonSha256"].as_str().unwrap();
    assert_eq!(canonical.len(), 64);
    assert_eq!(
        receipt["receiptId"],
        format!("lwr_{}", &canonical[..24]).as_str()
    );

    // A second request id for the paid invoice: its own result.requestId, the payment's single
    // receipt (made for the request that paid).
    let (status, second) = app.pay("second-id", &invoice.payment_request, 45_000).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["requestId"], "second-id");
    assert_eq!(second["result"]["requestId"], "second-id");
    assert_eq!(second["result"]["receipt"], *receipt);
    assert_eq!(second["result"]["receipt"]["requestId"], "body-id-1");
    assert_eq!(second["result"]["payment"], *payment);
    assert_eq!(fake.send_count(&invoice.payment_hash), 1);

    // No request id at all: a fresh UUID, the same in the body and the header.
    let other = fake.issue_invoice(1_000, "no id");
    let response = app
        .http
        .post(format!("{}/pay-bolt11", app.base))
        .bearer_auth(TOKEN)
        .json(
            &json!({ "payment": { "invoice": other.payment_request, "maxAmountMsats": 2_000,
                                    "host": "sats4ai.com" } }),
        )
        .send()
        .await
        .unwrap();
    let header_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["requestId"], header_id.as_str());
    assert!(uuid::Uuid::parse_str(&header_id).is_ok(), "{header_id}");
    // The header wins over the body.
    let third = fake.issue_invoice(1_000, "both ids");
    let (status, body) = app
        .pay_with(
            Some("header-id"),
            json!({ "requestId": "body-id-2",
                    "payment": { "invoice": third.payment_request, "maxAmountMsats": 2_000,
                                 "host": "sats4ai.com" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["requestId"], "header-id");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_field_of_the_error_answer() {
    let db = TestDb::sqlite().await;
    let fake = FakeLnd::start().await;
    let app = spawn_app(&db.database, &fake.config(), test_config()).await;
    let invoice = fake.issue_invoice(10_000, "x");

    // Policy denial: { ok: false, error: { requestId, code, message, details } }.
    let (status, body) = app.pay("cap-1", &invoice.payment_request, 250_000).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let top: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, ["ok", "error"]);
    assert_eq!(body["ok"], false);
    let error = &body["error"];
    let keys: Vec<&str> = error
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["requestId", "code", "message", "details"]);
    assert_eq!(error["requestId"], "cap-1");
    assert_eq!(error["code"], "request_cap_exceeded");
    assert_eq!(
        error["message"],
        "request max amount 250000 msats exceeds service cap 200000 msats"
    );
    // No invoice was quoted: the details carry the cap, not the request's maximum as a quote.
    assert_eq!(
        error["details"],
        json!({ "host": "sats4ai.com", "maxAllowedMsats": 200_000 })
    );

    // Errors without details have no `details` key.
    let (status, body) = app.pay("bad-1", "lnbcrt1pnotaninvoice", 50_000).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let keys: Vec<&str> = body["error"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["requestId", "code", "message"]);

    // Other methods: 405 with the JSON error shape and an Allow header.
    for (method, path, allowed) in [
        (reqwest::Method::GET, "/pay-bolt11", "POST"),
        (reqwest::Method::PUT, "/pay-bolt11", "POST"),
        (reqwest::Method::DELETE, "/pay-bolt11", "POST"),
        (reqwest::Method::POST, "/status", "GET"),
        (reqwest::Method::POST, "/healthz", "GET"),
    ] {
        let response = app
            .http
            .request(method.clone(), format!("{}{path}", app.base))
            .bearer_auth(TOKEN)
            .header("x-request-id", "m-1")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], allowed);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "ok": false, "error": { "requestId": "m-1", "code": "method_not_allowed",
                    "message": format!("this route only accepts {allowed}") } })
        );
    }
    // An unknown route keeps the JSON 404.
    let response = app
        .http
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // /status documents its fields; apiKeyConfigured is gone, nodeCause is there.
    let status = app.status().await;
    let fields: Vec<&str> = status["status"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(!fields.contains(&"apiKeyConfigured"));
    for documented in [
        "walletId",
        "mode",
        "authMode",
        "authEnforced",
        "authTokenVersion",
        "lifecycle",
        "network",
        "identityPubkey",
        "nodeAlias",
        "balanceSats",
        "channelBalanceMsats",
        "nodeCause",
        "ready",
        "leaseHeld",
        "allowedHostCount",
        "requestCapMsats",
        "windowCapMsats",
        "windowMs",
        "runCapMsats",
        "ownerWindowCapMsats",
        "windowSpendMsats",
        "openReservations",
        "recentPaymentsCount",
        "lastPaymentId",
        "lastPaymentAtMs",
        "lastErrorCode",
        "lastErrorMessage",
        "updatedAtMs",
    ] {
        assert!(fields.contains(&documented), "{documented}");
    }
    db.cleanup().await;
}

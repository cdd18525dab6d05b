//! Payments reach their owner: a Bolt11 payment made through the wallet executor (fake LND over
//! gRPC/TLS) is projected into `runtime.payments` by the runtime's projectors and delivered by
//! Khala to the owner only — over HTTP hydration and over the WebSocket — without the preimage,
//! the invoice or any credential.

use reqwest::StatusCode;
use serde_json::json;
use sync_gateway::auth::mint::{mint, MintRequest};
use sync_gateway::test_utils::now_secs;

use crate::app::{spawn_app_with_sync, TestApp};
use crate::khala_e2e::{eventually, hydrate, joined, updates_until};
use crate::support::on_both_backends;
use engine::testing::TestDb;
use lightning::testing::FakeLnd;

use super::executor::{spawn_app, test_config};

const PAYMENTS: &str = "runtime.payments";

on_both_backends!(a_payment_reaches_its_owner_only_through_the_payments_read_model);

fn token(app: &TestApp, subject: &str) -> String {
    let gateway = &app.sync.as_ref().expect("sync lane").gateway;
    mint(
        gateway.verifier().config(),
        gateway.known_topics(),
        &MintRequest {
            subject: subject.to_owned(),
            scopes: vec![PAYMENTS.to_owned()],
            ..MintRequest::default()
        },
        now_secs(),
    )
    .expect("test sync token mints")
    .token
}

async fn a_payment_reaches_its_owner_only_through_the_payments_read_model(db: &TestDb) {
    let fake = FakeLnd::start().await;
    let executor = spawn_app(&db.database, &fake.config(), test_config()).await;
    let runtime = spawn_app_with_sync(db).await;
    let invoice = fake.issue_invoice(42_000, "read model");
    let (status, body) = executor
        .pay_with(
            Some("rm-1"),
            json!({ "userId": "7", "runId": "run_rm",
                    "payment": { "invoice": invoice.payment_request, "maxAmountMsats": 50_000,
                                 "host": "sats4ai.com" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let owner = token(&runtime, "user:7");
    let key = format!("runtime/payment:{}", invoice.payment_hash);
    let doc = eventually("the payment document", || async {
        let hydration = hydrate(&runtime.base, &owner, PAYMENTS).await;
        hydration
            .docs
            .into_iter()
            .find(|d| d.doc_key == key && d.payload["status"] == "succeeded")
    })
    .await;
    let payload = &doc.payload;
    assert_eq!(payload["payment_id"], invoice.payment_hash.as_str());
    assert_eq!(payload["owner_user_id"], "7");
    assert_eq!(payload["run_id"], "run_rm");
    assert_eq!(payload["settled_amount_msats"], 42_000);
    assert_eq!(
        payload["preimage_sha256"],
        aggregates::payment::types::sha256_hex(&invoice.preimage_hex.to_lowercase())
    );
    assert_eq!(
        payload["runtime_source"]["aggregate_type"],
        "lightning_payment"
    );
    let text = payload.to_string();
    assert!(
        !text.contains(&invoice.preimage_hex),
        "no preimage in the read model"
    );
    assert!(
        !text.contains(&invoice.payment_request),
        "no invoice in the read model"
    );
    assert!(
        !text.contains(super::executor::TOKEN),
        "no credential in the read model"
    );

    // Another user sees nothing, in hydration and on the socket.
    let stranger = token(&runtime, "user:8");
    assert_eq!(
        hydrate(&runtime.base, &stranger, PAYMENTS).await.docs.len(),
        0
    );

    // The owner replays the document's every version over the WebSocket.
    let mut client = joined(&runtime.base, &owner).await;
    client
        .subscribe(json!({"topics": [PAYMENTS], "resume_after": {PAYMENTS: 0}}))
        .await
        .expect("subscribe transport")
        .expect("subscribe accepted");
    let updates = updates_until(&mut client, "the settled payment", |updates| {
        updates.iter().any(|u| {
            u.doc_key == key
                && u.payload
                    .as_ref()
                    .is_some_and(|p| p["status"] == "succeeded")
        })
    })
    .await;
    let versions: Vec<u64> = updates
        .iter()
        .filter(|u| u.doc_key == key)
        .map(|u| u.doc_version)
        .collect();
    assert_eq!(versions, (1..=doc.doc_version).collect::<Vec<_>>());
    assert!(updates.iter().all(|u| u.doc_key == key));
    let mut other = joined(&runtime.base, &stranger).await;
    other
        .subscribe(json!({"topics": [PAYMENTS], "resume_after": {PAYMENTS: 0}}))
        .await
        .expect("subscribe transport")
        .expect("subscribe accepted");
    let batch = other.next_batch().await.expect("a replay batch");
    assert!(batch.replay_complete, "{batch:?}");
    assert!(
        batch.updates.is_empty(),
        "a stranger receives nothing: {batch:?}"
    );
    client.close().await;
    other.close().await;
    runtime.shutdown().await.unwrap();
}

//! Given/when/then tests for recording a run's receipt.

use cqrs_es::test::TestFramework;
use serde_json::{json, Map, Value};

use super::*;

type Fixture = TestFramework<RunReceipt>;

fn at() -> Timestamp {
    "2026-02-01T00:00:09Z".parse().unwrap()
}

fn run_id() -> RunId {
    RunId::parse("run_1").unwrap()
}

fn receipt(trajectory: &str) -> Map<String, Value> {
    let mut receipt = json!({
        "schema": RECEIPT_SCHEMA,
        "session_id": "run_1",
        "trajectory_hash": trajectory,
        "policy_bundle_id": "runtime.default",
        "last_seq": 2,
    })
    .as_object()
    .cloned()
    .unwrap();
    let sha = receipt_canonical_sha256(&receipt);
    receipt.insert("canonical_json_sha256".into(), Value::String(sha));
    receipt
}

fn record(receipt: Map<String, Value>) -> Stamped<ReceiptCommand> {
    Stamped::new(
        at(),
        ReceiptCommand::RecordReceipt {
            run_id: run_id(),
            receipt,
            replay_hash: "sha256:rr".into(),
            run_status: "succeeded".into(),
        },
    )
}

fn recorded(receipt: Map<String, Value>) -> ReceiptEvent {
    ReceiptEvent::ReceiptRecorded {
        run_id: run_id(),
        canonical_json_sha256: receipt_canonical_sha256(&receipt),
        trajectory_hash: receipt["trajectory_hash"].as_str().unwrap().into(),
        replay_hash: "sha256:rr".into(),
        run_status: "succeeded".into(),
        last_seq: 2,
        recorded_at: at(),
        receipt,
    }
}

#[test]
fn the_first_receipt_is_recorded() {
    Fixture::with(())
        .given_no_previous_events()
        .when(record(receipt("sha256:t1")))
        .then_expect_events(vec![recorded(receipt("sha256:t1"))]);
}

#[test]
fn recording_the_same_receipt_again_changes_nothing() {
    Fixture::with(())
        .given(vec![recorded(receipt("sha256:t1"))])
        .when(record(receipt("sha256:t1")))
        .then_expect_events(vec![]);
}

#[test]
fn a_signature_does_not_make_a_receipt_different() {
    let mut signed = receipt("sha256:t1");
    signed.insert("signature".into(), json!({"signature_hex": "00"}));
    Fixture::with(())
        .given(vec![recorded(receipt("sha256:t1"))])
        .when(record(signed))
        .then_expect_events(vec![]);
}

#[test]
fn a_different_receipt_for_the_same_run_is_rejected() {
    let first = receipt("sha256:t1");
    let second = receipt("sha256:t2");
    Fixture::with(())
        .given(vec![recorded(first.clone())])
        .when(record(second.clone()))
        .then_expect_error(ReceiptError::Conflict {
            recorded: receipt_canonical_sha256(&first),
            offered: receipt_canonical_sha256(&second),
        });
}

#[test]
fn a_receipt_whose_hash_does_not_match_its_content_is_rejected() {
    let mut bad = receipt("sha256:t1");
    bad.insert("trajectory_hash".into(), json!("sha256:edited"));
    let result = Fixture::with(())
        .given_no_previous_events()
        .when(record(bad));
    let error = result.inspect_result().unwrap_err();
    assert_eq!(error.reason(), "invalid_receipt");
}

#[test]
fn a_receipt_for_another_run_is_rejected() {
    let mut other = receipt("sha256:t1");
    other.insert("session_id".into(), json!("run_2"));
    let sha = receipt_canonical_sha256(&other);
    other.insert("canonical_json_sha256".into(), json!(sha));
    let error = Fixture::with(())
        .given_no_previous_events()
        .when(record(other))
        .inspect_result()
        .unwrap_err();
    assert_eq!(
        error,
        ReceiptError::Invalid("session_id must be the run id".into())
    );
}

//! Audit bundles: export on both backends and verify; every kind of tampering is named; the
//! run artifact routes through the real app (auth, owner checks, streamed bundle); the receipt a
//! run records when it finishes shows in its run summary read model.

use std::path::Path;
use std::sync::Arc;

use aggregates::Timestamp;
use engine::artifacts::{verify_receipt_signature, ReceiptSignature, ReceiptSigner};
use engine::clock::Stamps;
use engine::notify::JournalNotifier;
use engine::testing::TestDb;
use engine::{Engine, EngineConfig};
use openagents_runtime::audit::{
    export, verify_bundle, Cut, ExportOptions, FindingKind, Scope, VerifyOptions, VerifyReport,
};
use openagents_runtime::replay::fixture::Fixture;
use openagents_runtime::replay::runner::run_fixture;
use serde_json::Value;

use crate::support::on_both_backends;

const KEY: &str = "c0ffee0000000000000000000000000000000000000000000000000000000001";

fn fixture(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("replay-fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A journal with runs (tools, cancel, legacy upcast, interleaved with workers).
async fn seeded(db: &TestDb) {
    for name in [
        "run_happy_path_with_tools.json",
        "interleaved_runs_of_several_workers.json",
        "legacy_events_upcast.json",
    ] {
        run_fixture(&fixture(name), db.database.journal())
            .await
            .unwrap();
    }
}

fn options(scope: Scope, signer: Option<ReceiptSigner>) -> ExportOptions {
    ExportOptions {
        scope,
        signer,
        runtime_version: "test".into(),
        exported_at: "2026-03-01T00:00:00Z".parse().unwrap(),
        progress: false,
        verify_stored: true,
        cut: Cut::IntegrityOnly,
        consistency_from: None,
    }
}

async fn bundle(db: &TestDb, scope: Scope, signer: Option<ReceiptSigner>) -> Vec<u8> {
    let mut out = Vec::new();
    export(&db.database, &options(scope, signer), &mut out)
        .await
        .unwrap();
    out
}

fn verify(bytes: &[u8]) -> VerifyReport {
    verify_bundle(bytes, &VerifyOptions::integrity_only()).unwrap()
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut text = lines.join("\n");
    text.push('\n');
    text.into_bytes()
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

/// Index of the event line of `aggregate_id#sequence`.
fn event_line(lines: &[String], aggregate_id: &str, sequence: i64) -> usize {
    lines
        .iter()
        .position(|l| {
            let v = parse(l);
            v["type"] == "event" && v["aggregate_id"] == aggregate_id && v["sequence"] == sequence
        })
        .unwrap_or_else(|| panic!("no event {aggregate_id}#{sequence}"))
}

fn kinds(report: &VerifyReport) -> Vec<FindingKind> {
    report.findings.iter().map(|f| f.kind).collect()
}

on_both_backends!(
    a_whole_journal_exports_to_a_bundle_that_verifies,
    one_run_and_one_worker_export_only_their_events,
    an_export_that_trusts_stored_hashes_writes_the_same_bundle_as_one_that_recomputes_them
);

async fn a_whole_journal_exports_to_a_bundle_that_verifies(db: &TestDb) {
    seeded(db).await;
    let signer = ReceiptSigner::from_secret_hex(KEY).unwrap();
    let bytes = bundle(db, Scope::All, Some(signer.clone())).await;
    let report = verify_bundle(
        bytes.as_slice(),
        &VerifyOptions {
            expected_signer: Some(signer.public_key_hex()),
            integrity_only: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.findings, vec![]);
    assert_eq!(report.events, 14 + 32 + 6);
    assert_eq!((report.receipts_checked, report.replays_checked), (6, 6));
    assert_eq!(
        report.signed_by.as_deref(),
        Some(signer.public_key_hex().as_str())
    );
    let all = lines(&bytes);
    let manifest = parse(all.last().unwrap());
    assert_eq!(manifest["counts"]["events"], 52);
    assert_eq!(manifest["scope"]["kind"], "all");
    // The replay artifact of the happy path is the one the fixture expects.
    let expected = fixture("run_happy_path_with_tools.json").expected.unwrap();
    let replay = all
        .iter()
        .map(|l| parse(l))
        .find(|v| v["type"] == "replay" && v["run_id"] == "run_happy")
        .unwrap();
    assert_eq!(
        replay["replay_hash"],
        expected["runs"]["run_happy"]["replay_hash"]
    );
    // Another key is not the expected signer.
    let other = ReceiptSigner::from_secret_hex(&"22".repeat(32)).unwrap();
    let report = verify_bundle(
        bytes.as_slice(),
        &VerifyOptions {
            expected_signer: Some(other.public_key_hex()),
            integrity_only: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.has(FindingKind::BadSignature));
}

/// `--no-verify` takes the stored hashes and splits plain metadata as text instead of parsing it:
/// every line must still be the same JSON value as the recomputing export's (metadata members may
/// come in another order), and the bundle must verify.
async fn an_export_that_trusts_stored_hashes_writes_the_same_bundle_as_one_that_recomputes_them(
    db: &TestDb,
) {
    seeded(db).await;
    let signer = ReceiptSigner::from_secret_hex(KEY).unwrap();
    let recomputed = bundle(db, Scope::All, Some(signer.clone())).await;
    let mut trusting = Vec::new();
    let summary = export(
        &db.database,
        &ExportOptions {
            verify_stored: false,
            ..options(Scope::All, Some(signer))
        },
        &mut trusting,
    )
    .await
    .unwrap();
    assert_eq!(summary.events, 52);
    assert_eq!(verify(&trusting).findings, vec![]);
    let (a, b) = (lines(&recomputed), lines(&trusting));
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let (a, b) = (parse(a), parse(b));
        if a["type"] == "manifest" {
            // Its bundle hash covers the bytes, which may differ in metadata member order.
            continue;
        }
        assert_eq!(a, b, "line {}", i + 1);
    }
}

async fn one_run_and_one_worker_export_only_their_events(db: &TestDb) {
    seeded(db).await;
    let run = bundle(
        db,
        Scope::Run(aggregates::ids::RunId::parse("run-b").unwrap()),
        None,
    )
    .await;
    let report = verify(&run);
    assert_eq!(report.findings, vec![]);
    // run-b's 5 events and its recorded receipt.
    assert_eq!(
        (report.events, report.aggregates, report.receipts_checked),
        (6, 2, 1)
    );
    let worker = bundle(
        db,
        Scope::Worker(aggregates::ids::WorkerId::parse("w-2").unwrap()),
        None,
    )
    .await;
    let report = verify(&worker);
    assert_eq!(report.findings, vec![]);
    assert_eq!(
        (report.events, report.aggregates, report.receipts_checked),
        (4, 1, 0)
    );
}

/// A signed bundle of the embedded journal to tamper with.
async fn sample() -> (Vec<String>, ReceiptSigner) {
    let db = TestDb::sqlite().await;
    seeded(&db).await;
    let signer = ReceiptSigner::from_secret_hex(KEY).unwrap();
    let bytes = bundle(&db, Scope::All, Some(signer.clone())).await;
    db.cleanup().await;
    assert!(verify(&bytes).is_valid());
    (lines(&bytes), signer)
}

#[tokio::test]
async fn a_flipped_byte_in_an_event_is_named_at_its_line() {
    let (mut all, _) = sample().await;
    let i = event_line(&all, "run_happy", 3);
    let at = all[i].find("list the files").unwrap();
    all[i].replace_range(at..at + 1, "L");
    let report = verify(&join(&all));
    let first = &report.findings[0];
    assert_eq!(
        (first.kind, first.line),
        (FindingKind::ContentMismatch, Some(i + 1)),
        "{:?}",
        report.findings
    );
    assert!(
        first.message.contains("run/run_happy#3"),
        "{}",
        first.message
    );
    assert!(report.has(FindingKind::BundleHashMismatch));
    // The run's receipt and replay no longer match the (altered) events either.
    assert!(report.has(FindingKind::ReceiptMismatch) && report.has(FindingKind::ReplayMismatch));
}

#[tokio::test]
async fn a_byte_that_breaks_the_json_is_named_at_its_line() {
    let (mut all, _) = sample().await;
    let i = event_line(&all, "w-1", 2);
    all[i].replace_range(0..1, "[");
    let report = verify(&join(&all));
    assert_eq!(
        (report.findings[0].kind, report.findings[0].line),
        (FindingKind::InvalidLine, Some(i + 1))
    );
}

#[tokio::test]
async fn a_missing_event_is_named() {
    let (mut all, _) = sample().await;
    let i = event_line(&all, "run-c", 3);
    all.remove(i);
    let report = verify(&join(&all));
    let missing: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::MissingEvents)
        .collect();
    assert_eq!(missing.len(), 1, "{:?}", report.findings);
    assert!(
        missing[0].message.contains("run/run-c: #3 is missing"),
        "{}",
        missing[0].message
    );
    assert!(!report.has(FindingKind::DuplicateEvent) && !report.has(FindingKind::ReorderedEvent));
}

#[tokio::test]
async fn events_missing_at_the_end_of_an_aggregate_are_named() {
    let (mut all, _) = sample().await;
    let i = event_line(&all, "w-3", 3);
    all.remove(i);
    let report = verify(&join(&all));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::MissingEvents
                && f.message
                    .contains("codex_worker/w-3: the bundle ends at #2 but its chain head is #3")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_duplicated_event_is_named() {
    let (mut all, _) = sample().await;
    let i = event_line(&all, "run_legacy", 2);
    let copy = all[i].clone();
    all.insert(i + 1, copy);
    let report = verify(&join(&all));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::DuplicateEvent
                && f.line == Some(i + 2)
                && f.message.contains("run/run_legacy#2 appears again")),
        "{:?}",
        report.findings
    );
    assert!(!report.has(FindingKind::MissingEvents));
}

#[tokio::test]
async fn reordered_events_are_named() {
    let (mut all, _) = sample().await;
    let i = event_line(&all, "run_happy", 6);
    all.swap(i, i + 1);
    let report = verify(&join(&all));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ReorderedEvent
                && f.message.contains("run/run_happy#6 appears after #7")),
        "{:?}",
        report.findings
    );
    assert!(report.has(FindingKind::OutOfCommitOrder));
    assert!(
        !report.has(FindingKind::MissingEvents),
        "{:?}",
        report.findings
    );
}

fn rewrite(
    all: &mut [String],
    pick: impl Fn(&Value) -> bool,
    change: impl Fn(&mut Value),
) -> usize {
    let i = all.iter().position(|l| pick(&parse(l))).unwrap();
    let mut value = parse(&all[i]);
    change(&mut value);
    all[i] = serde_json::to_string(&value).unwrap();
    i
}

#[tokio::test]
async fn a_receipt_that_does_not_match_its_events_is_named_even_when_rehashed() {
    let (mut all, _) = sample().await;
    let i = rewrite(
        &mut all,
        |v| v["type"] == "receipt" && v["run_id"] == "run-a",
        |v| {
            let receipt = v["receipt"].as_object_mut().unwrap();
            receipt.insert("trajectory_hash".into(), Value::from("sha256:0000"));
            receipt.remove("signature");
            let sha = aggregates::receipt::receipt_canonical_sha256(receipt);
            receipt.insert("canonical_json_sha256".into(), Value::from(sha));
        },
    );
    let report = verify(&join(&all));
    let finding = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::ReceiptMismatch)
        .expect("receipt mismatch");
    assert_eq!(finding.line, Some(i + 1));
    assert!(
        finding.message.contains(
            "receipt of run run-a does not match its events (first difference at $.trajectory_hash"
        ),
        "{}",
        finding.message
    );
}

#[tokio::test]
async fn a_replay_that_does_not_match_its_events_is_named_even_when_rehashed() {
    let (mut all, _) = sample().await;
    // A v2 replay line carries the hash of the run's REPLAY.jsonl; the verifier renders the text
    // from the events again. A replay with another ending, hashed as if it were the run's:
    rewrite(
        &mut all,
        |v| v["type"] == "replay" && v["run_id"] == "run-d",
        |v| {
            assert!(v.get("replay_jsonl").is_none(), "v2 carries the hash only");
            let text = "{\"type\":\"SessionEnd\",\"confidence\":0.9}\n";
            v["replay_hash"] = Value::from(aggregates::canonical::sha256_prefixed(text.as_bytes()));
        },
    );
    let report = verify(&join(&all));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ReplayMismatch
                && f.message
                    .contains("replay of run run-d: its events give replay_hash")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_v1_replay_line_must_carry_text_that_hashes_to_its_replay_hash() {
    let (all, _) = sample().await;
    // The same bundle as v1 wrote it: the schema, and each replay line with its text. Its text
    // is not at hand here, so one that hashes to the stated replay_hash cannot be made: any text
    // is named, and a missing text too.
    let as_v1 = |text: Option<&str>| -> Vec<u8> {
        let mut lines = all.clone();
        rewrite(
            &mut lines,
            |v| v["type"] == "header",
            |v| v["schema"] = Value::from("openagents.audit_bundle.v1"),
        );
        rewrite(
            &mut lines,
            |v| v["type"] == "replay" && v["run_id"] == "run-d",
            |v| {
                if let Some(text) = text {
                    v["replay_jsonl"] = Value::from(text);
                }
            },
        );
        join(&lines)
    };
    let report = verify(&as_v1(Some("not the replay\n")));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ReplayMismatch
                && f.message
                    .contains("replay of run run-d: its text hashes to")),
        "{:?}",
        report.findings
    );
    let report = verify(&as_v1(None));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::InvalidLine
                && f.message
                    .contains("a replay line of a v1 bundle lacks replay_jsonl")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_bad_signature_is_named() {
    let (mut all, _) = sample().await;
    let last = all.len() - 1;
    rewrite(
        &mut all,
        |v| v["type"] == "manifest",
        |v| {
            let sig = v["signature"]["signature_hex"].as_str().unwrap().to_owned();
            let first = if sig.starts_with('0') { '1' } else { '0' };
            let flipped = format!("{first}{}", sig.get(1..).unwrap());
            v["signature"]["signature_hex"] = Value::from(flipped);
        },
    );
    let report = verify(&join(&all));
    assert_eq!(kinds(&report), vec![FindingKind::BadSignature]);
    assert_eq!(report.findings[0].line, Some(last + 1));
    // A receipt signed by someone else is named too.
    let (mut all, _) = sample().await;
    rewrite(
        &mut all,
        |v| v["type"] == "receipt" && v["run_id"] == "run_happy",
        |v| {
            let sha = v["receipt"]["canonical_json_sha256"]
                .as_str()
                .unwrap()
                .to_owned();
            let forged = ReceiptSigner::from_secret_hex(&"33".repeat(32))
                .unwrap()
                .sign_sha256_hex(&sha)
                .unwrap();
            let mut sig: ReceiptSignature =
                serde_json::from_value(v["receipt"]["signature"].clone()).unwrap();
            sig.signature_hex = forged.signature_hex;
            v["receipt"]["signature"] = serde_json::to_value(sig).unwrap();
        },
    );
    let report = verify(&join(&all));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::BadSignature
                && f.message.contains("receipt of run run_happy")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_consistently_rewritten_history_still_breaks_the_chain_or_the_signature() {
    let (mut all, _) = sample().await;
    // Change an event and give it a matching content hash: its chain link no longer follows.
    let i = rewrite(
        &mut all,
        |v| v["type"] == "event" && v["aggregate_id"] == "run-b" && v["sequence"] == 3,
        |v| {
            v["payload"]["FrameAppended"]["payload"]["delta"] = Value::from("rewritten");
            let content = aggregates::chain::EventContent {
                aggregate_type: v["aggregate_type"].as_str().unwrap(),
                aggregate_id: v["aggregate_id"].as_str().unwrap(),
                sequence: v["sequence"].as_u64().unwrap(),
                event_type: v["event_type"].as_str().unwrap(),
                event_version: v["event_version"].as_str().unwrap(),
                payload: &v["payload"],
                metadata: &v["metadata"],
            }
            .content_hash();
            v["content_hash"] = Value::from(content);
        },
    );
    let report = verify(&join(&all));
    assert_eq!(
        report.findings[0].kind,
        FindingKind::ChainBroken,
        "{:?}",
        report.findings
    );
    assert_eq!(report.findings[0].line, Some(i + 1));
}

#[tokio::test]
async fn a_truncated_bundle_is_named() {
    let (mut all, _) = sample().await;
    all.pop();
    let report = verify(&join(&all));
    assert_eq!(kinds(&report), vec![FindingKind::MissingManifest]);
}

#[tokio::test]
async fn a_row_edited_in_the_journal_shows_up_in_the_next_export() {
    let db = TestDb::sqlite().await;
    seeded(&db).await;
    let engine::Database::Sqlite { pool, .. } = &db.database else {
        unreachable!()
    };
    sqlx::query("UPDATE events SET payload = replace(payload, 'make check', 'make chek') WHERE aggregate_id = 'run-d' AND sequence = 3")
        .execute(pool)
        .await
        .unwrap();
    let mut out = Vec::new();
    let summary = export(&db.database, &options(Scope::All, None), &mut out)
        .await
        .unwrap();
    assert_eq!(summary.stored_hash_mismatches, 1);
    let report = verify(&out);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ContentMismatch && f.message.contains("run/run-d#3")),
        "{:?}",
        report.findings
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_time_range_export_anchors_partial_chains_and_verifies() {
    let db = TestDb::sqlite().await;
    seeded(&db).await;
    let since: Timestamp = "2026-02-01T00:00:20Z".parse().unwrap();
    let until: Timestamp = "2026-02-01T00:00:30Z".parse().unwrap();
    let bytes = bundle(&db, Scope::TimeRange { since, until }, None).await;
    let report = verify(&bytes);
    assert_eq!(report.findings, vec![]);
    let all = lines(&bytes);
    let events: Vec<Value> = all
        .iter()
        .map(|l| parse(l))
        .filter(|v| v["type"] == "event")
        .collect();
    assert!(!events.is_empty());
    for event in &events {
        let at: Timestamp = event["recorded_at"].as_str().unwrap().parse().unwrap();
        assert!(at >= since && at < until);
    }
    // Partial runs have no receipt in the bundle; the first event of run-a in range links to its
    // predecessor outside it.
    assert_eq!(report.receipts_checked, 0);
    let first_a = events
        .iter()
        .find(|v| v["aggregate_id"] == "run-a")
        .unwrap();
    assert!(first_a["prev_chain_hash"].is_string());
    db.cleanup().await;
}

mod http {
    //! The artifact routes through the real app (`spawn_app`, mounted as `serve` mounts them):
    //! internal auth, the owner rules of the run routes, and the downloads themselves.

    use std::time::{Duration, Instant};

    use projectors::run_summary::RunSummaries;
    use serde_json::json;

    use super::*;
    use crate::app::{spawn_app_with, sync_settings, Options, TestApp};

    on_both_backends!(
        only_the_runs_owner_reads_its_receipt_replay_and_audit_bundle,
        the_run_summary_shows_the_receipt_recorded_when_a_run_finishes_over_http
    );

    async fn spawn(db: &TestDb, signer: Option<ReceiptSigner>, sync: bool) -> TestApp {
        spawn_app_with(
            db,
            Options {
                artifacts: Some(signer),
                sync: sync.then(sync_settings),
                ..Options::default()
            },
        )
        .await
    }

    fn artifact(run_id: &str, which: &str) -> String {
        format!("/internal/v1/runs/{run_id}/{which}")
    }

    async fn only_the_runs_owner_reads_its_receipt_replay_and_audit_bundle(db: &TestDb) {
        for name in [
            "run_happy_path_with_tools.json",
            "guest_run_with_explicit_receipt_recording.json",
        ] {
            run_fixture(&fixture(name), db.database.journal())
                .await
                .unwrap();
        }
        let expected = fixture("run_happy_path_with_tools.json").expected.unwrap();
        let signer = ReceiptSigner::from_secret_hex(KEY).unwrap();
        let app = spawn(db, Some(signer.clone()), false).await;

        // The owner (user 42, no tenant on either side) reads all three.
        let response = app
            .get(&artifact("run_happy", "receipt"))
            .user("42")
            .send()
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        let receipt = &response.json;
        assert_eq!(receipt["schema"], "openagents.receipt.v1");
        assert_eq!(
            receipt["canonical_json_sha256"],
            expected["runs"]["run_happy"]["receipt"]["canonical_json_sha256"]
        );
        let signature: ReceiptSignature =
            serde_json::from_value(receipt["signature"].clone()).unwrap();
        assert_eq!(signature.signer_pubkey, signer.public_key_hex());
        assert!(verify_receipt_signature(&signature).unwrap());

        let response = app
            .get(&format!(
                "{}?thread_id=thread-run_happy",
                artifact("run_happy", "replay")
            ))
            .user("42")
            .send()
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(
            response.header("content-type"),
            Some("application/x-ndjson")
        );
        assert_eq!(
            Value::from(aggregates::canonical::sha256_prefixed(
                response.text.as_bytes()
            )),
            expected["runs"]["run_happy"]["replay_hash"]
        );

        let response = app
            .get(&artifact("run_happy", "audit-bundle"))
            .user("42")
            .send_streaming()
            .await;
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("audit-run_happy.jsonl"));
        let bytes = response.bytes().await.unwrap();
        let report = verify_bundle(
            &bytes[..],
            &VerifyOptions {
                expected_signer: Some(signer.public_key_hex()),
                integrity_only: true,
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert_eq!(report.findings, vec![]);
        assert_eq!((report.events, report.receipts_checked), (14, 1));

        for which in ["receipt", "replay", "audit-bundle"] {
            let path = artifact("run_happy", which);
            // No token at all.
            app.get(&path)
                .user("42")
                .token(None)
                .send()
                .await
                .assert_error(401, "unauthorized");
            // A valid token for another user, or a guest.
            let other = app.get(&path).user("2").send().await;
            other.assert_error(403, "forbidden");
            assert_eq!(other.reason(), "not_owner", "{which}");
            let guest = app.get(&path).guest("g-1").send().await;
            guest.assert_error(403, "forbidden");
            assert_eq!(guest.reason(), "not_owner", "{which}");
            // The owner, but about another thread: named in the query, or bound in the token.
            let query = app
                .get(&format!("{path}?thread_id=thread-other"))
                .user("42")
                .send()
                .await;
            query.assert_error(403, "forbidden");
            assert_eq!(query.reason(), "not_owner", "{which}");
            let bound = app
                .get(&path)
                .user("42")
                .claims(|c| c.thread_id = Some("thread-other".into()))
                .send()
                .await;
            bound.assert_error(403, "forbidden");
            assert_eq!(bound.reason(), "claim_mismatch", "{which}");
            // A token bound to another run.
            let run = app
                .get(&path)
                .user("42")
                .claims(|c| c.run_id = Some("run_guest".into()))
                .send()
                .await;
            run.assert_error(403, "forbidden");
            // Unknown and malformed runs.
            let missing = app.get(&artifact("nope", which)).user("42").send().await;
            missing.assert_error(404, "not_found");
            assert_eq!(missing.reason(), "run_not_found", "{which}");
            let bad = app
                .get(&artifact("bad%20id", which))
                .user("42")
                .send()
                .await;
            bad.assert_error(400, "invalid_request");
            assert_eq!(bad.reason(), "invalid_run_id", "{which}");
        }

        // A guest-owned run: its guest scope reads it, a user does not.
        let response = app
            .get(&artifact("run_guest", "receipt"))
            .guest("g-1")
            .send()
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(response.json["session_id"], "run_guest");
        let response = app
            .get(&artifact("run_guest", "receipt"))
            .user("42")
            .send()
            .await;
        response.assert_error(403, "forbidden");

        // A run created in a tenant: the same user from another tenant is refused.
        let created = app
            .post(
                "/internal/v1/runs",
                json!({"run_id": "run_org", "thread_id": "thread_org"}),
            )
            .claims(|c| c.oa_org_id = Some("org_a".into()))
            .send()
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        let elsewhere = app
            .get(&artifact("run_org", "receipt"))
            .claims(|c| c.oa_org_id = Some("org_b".into()))
            .send()
            .await;
        elsewhere.assert_error(403, "forbidden");
        assert_eq!(elsewhere.reason(), "org_mismatch");
        let home = app
            .get(&artifact("run_org", "receipt"))
            .claims(|c| c.oa_org_id = Some("org_a".into()))
            .send()
            .await;
        assert_eq!(home.status, 200, "{}", home.text);
        assert_eq!(home.json["session_id"], "run_org");
        app.shutdown().await.unwrap();
    }

    async fn the_run_summary_shows_the_receipt_recorded_when_a_run_finishes_over_http(db: &TestDb) {
        let signer = ReceiptSigner::from_secret_hex(KEY).unwrap();
        let app = spawn(db, Some(signer), true).await;
        app.running_run("run_done").await;
        for (frame_id, frame_type, payload) in [
            (
                "f-1",
                "tool_call",
                json!({"tool_call_id": "c-1", "name": "shell", "arguments": {"cmd": "ls"}}),
            ),
            (
                "f-2",
                "tool_result",
                json!({"tool_call_id": "c-1", "output": "a b", "ok": true}),
            ),
            ("f-3", "text_delta", json!({"delta": "done"})),
        ] {
            let response = app
                .append_frame("run_done", "thread_1", frame_id, frame_type, payload)
                .await;
            assert_eq!(response.status, 202, "{}", response.text);
        }
        let finished = app.finish_run("run_done", "thread_1", "succeeded").await;
        assert_eq!(finished.status, 202, "{}", finished.text);

        let receipt = app.get(&artifact("run_done", "receipt")).send().await;
        assert_eq!(receipt.status, 200, "{}", receipt.text);
        let replay = app.get(&artifact("run_done", "replay")).send().await;
        assert_eq!(replay.status, 200, "{}", replay.text);
        let sha = receipt.json["canonical_json_sha256"].as_str().unwrap();
        assert_eq!(sha.len(), 64);

        // The recorder records the receipt; the projector folds it into the run summary.
        let store = &app.sync.as_ref().expect("the sync lane runs").store;
        let spec = projectors::runner::spec_of::<RunSummaries>();
        let key = projectors::run_summary::doc_key("run_done");
        let deadline = Instant::now() + Duration::from_secs(60);
        let doc = loop {
            let docs = store.all_docs(&spec).await.unwrap();
            let doc = docs.into_iter().find(|d| d.doc_key == key);
            if let Some(doc) = doc {
                let payload: Value = serde_json::from_str(&doc.payload).unwrap();
                if !payload["receipt"].is_null() {
                    break (doc, payload);
                }
            }
            assert!(
                Instant::now() < deadline,
                "the run summary never showed a receipt"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (row, payload) = doc;
        assert_eq!(payload["status"], "succeeded");
        assert_eq!(payload["tool_calls"], 1);
        let shown = &payload["receipt"];
        assert_eq!(shown["canonical_json_sha256"], sha);
        assert_eq!(shown["schema"], "openagents.receipt.v1");
        assert_eq!(shown["run_status"], "succeeded");
        assert_eq!(shown["trajectory_hash"], receipt.json["trajectory_hash"]);
        assert_eq!(
            shown["replay_hash"],
            aggregates::canonical::sha256_prefixed(replay.text.as_bytes())
        );
        assert_eq!(shown["last_seq"], receipt.json["last_seq"]);
        assert_eq!(payload["runtime_source"]["aggregate_type"], "run_receipt");
        // run.created, run.started, three frames, run.finished, then the receipt.
        assert_eq!(row.doc_version, 7);
        assert_eq!(row.owner, projectors::DocOwner::user("1"));
        app.shutdown().await.unwrap();
    }
}

mod recorder {
    use std::time::Duration;

    use aggregates::ids::{Owner, RunId, ThreadId, UserId};
    use aggregates::receipt::RunReceipt;
    use aggregates::run::{Outcome, Run, RunCommand};
    use engine::artifacts::{run_receipt_recorder, RecorderConfig};
    use engine::CommandContext;
    use serde_json::Map;
    use tokio_util::sync::CancellationToken;

    use super::*;

    on_both_backends!(the_recorder_catches_up_then_records_each_run_as_it_finishes);

    async fn finish(engine: &Engine, id: &str, end: bool) {
        let ctx = CommandContext::system("test");
        let create = openagents_runtime::replay::fixture::new_create_run(
            RunId::parse(id).unwrap(),
            ThreadId::parse("t").unwrap(),
            Owner::User(UserId::parse("1").unwrap()),
            Map::new(),
        );
        engine.execute::<Run>(id, create, &ctx).await.unwrap();
        engine
            .execute::<Run>(
                id,
                RunCommand::StartRun {
                    source: "runtime".into(),
                },
                &ctx,
            )
            .await
            .unwrap();
        if end {
            let finish = RunCommand::FinishRun {
                outcome: Outcome::Succeeded,
                reason_class: None,
                reason: None,
                error_code: None,
            };
            engine.execute::<Run>(id, finish, &ctx).await.unwrap();
        }
    }

    async fn receipt_version(engine: &Engine, id: &str) -> u64 {
        engine.load::<RunReceipt>(id).await.unwrap().1
    }

    async fn eventually_recorded(engine: &Engine, id: &str) {
        for _ in 0..1_000 {
            if receipt_version(engine, id).await == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no receipt recorded for {id}");
    }

    async fn the_recorder_catches_up_then_records_each_run_as_it_finishes(db: &TestDb) {
        let engine = Arc::new(Engine::new(
            db.database.journal(),
            Stamps::system(),
            Arc::new(JournalNotifier::new()),
            EngineConfig::default(),
        ));
        finish(&engine, "before-start", true).await;
        let shutdown = CancellationToken::new();
        let signer = ReceiptSigner::from_secret_hex(KEY).unwrap();
        let task = tokio::spawn(run_receipt_recorder(
            engine.clone(),
            db.database.clone(),
            RecorderConfig {
                signer: Some(signer),
                poll_interval: Duration::from_millis(200),
            },
            shutdown.clone(),
        ));
        eventually_recorded(&engine, "before-start").await;
        finish(&engine, "open", false).await;
        finish(&engine, "live", true).await;
        eventually_recorded(&engine, "live").await;
        assert_eq!(receipt_version(&engine, "open").await, 0);
        let (summary, _) = engine.load::<RunReceipt>("live").await.unwrap();
        let receipt = summary.receipt.unwrap();
        let signature: ReceiptSignature =
            serde_json::from_value(receipt["signature"].clone()).unwrap();
        assert!(verify_receipt_signature(&signature).unwrap());
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}

mod cli {
    use openagents_runtime::audit::{run, AuditCommand, ExportArgs, SigningArgs, VerifyArgs};

    use super::*;

    #[tokio::test]
    async fn the_export_and_verify_commands_round_trip_and_verify_fails_on_a_tampered_bundle() {
        let db = TestDb::sqlite().await;
        seeded(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("run.jsonl");
        let key_file = dir.path().join("key.hex");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        let export = ExportArgs {
            run_id: Some("run_happy".into()),
            worker_id: None,
            since: None,
            until: None,
            all: false,
            output: bundle.clone(),
            database_url: None,
            data_dir: db.data_dir.clone().unwrap(),
            signing: SigningArgs {
                signing_key_file: Some(key_file),
                signing_key: None,
            },
            no_verify: false,
            audit_key: openagents_runtime::audit::log::AuditKeyArgs {
                audit_key: Some(crate::audit_log::TEST_AUDIT_KEY.into()),
                audit_key_file: None,
            },
            consistency_from: None,
            integrity_only: false,
        };
        run(AuditCommand::Export(export)).await.unwrap();
        let pubkey = ReceiptSigner::from_secret_hex(KEY)
            .unwrap()
            .public_key_hex();
        let audit_pubkey = crate::audit_log::test_key().public_key_hex();
        let verify = |path: std::path::PathBuf, signer: Option<String>| VerifyArgs {
            bundle: path,
            expect_signer: signer,
            json: false,
            trusted_keys: vec![audit_pubkey.clone()],
            trusted_key_file: None,
            checkpoint: None,
            integrity_only: false,
        };
        run(AuditCommand::Verify(verify(
            bundle.clone(),
            Some(pubkey.clone()),
        )))
        .await
        .unwrap();
        // Trust nothing by default: without a trusted key the same bundle does not verify;
        // --integrity-only keeps the self-consistency check.
        let mut untrusted = verify(bundle.clone(), None);
        untrusted.trusted_keys.clear();
        assert!(run(AuditCommand::Verify(untrusted.clone())).await.is_err());
        untrusted.integrity_only = true;
        run(AuditCommand::Verify(untrusted)).await.unwrap();
        // A configured key file works like --trusted-key.
        let keys = dir.path().join("trusted.keys");
        std::fs::write(&keys, format!("# audit keys\n{audit_pubkey}\n")).unwrap();
        let mut from_file = verify(bundle.clone(), None);
        from_file.trusted_keys.clear();
        from_file.trusted_key_file = Some(keys);
        run(AuditCommand::Verify(from_file)).await.unwrap();

        let text = std::fs::read_to_string(&bundle).unwrap().replacen(
            "list the files",
            "list the filez",
            1,
        );
        let tampered = dir.path().join("tampered.jsonl");
        std::fs::write(&tampered, text).unwrap();
        assert!(run(AuditCommand::Verify(verify(tampered, Some(pubkey))))
            .await
            .is_err());
        db.cleanup().await;
    }
}

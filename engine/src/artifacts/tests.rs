//! Artifacts computed from runs executed through the real engine on an embedded journal: the
//! original runtime's compat histories, receipts with tool calls, and receipt recording.

use std::sync::Arc;

use aggregates::chain;
use aggregates::ids::{FrameId, Owner, RunId, ThreadId, UserId};
use aggregates::receipt::RunReceipt;
use aggregates::run::{Outcome as RunOutcome, Run, RunCommand, RunStatus};
use aggregates::Timestamp;
use serde_json::{json, Map, Value};

use super::history::{reexecute_history, HistoryCorpus, HISTORY_SCHEMA};
use super::*;
use crate::clock::{ManualClock, SequentialIds, Stamps};
use crate::command::{stored_content, CommandContext, Engine, EngineConfig};
use crate::journal::Journal;
use crate::notify::JournalNotifier;
use crate::testing::TestDb;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn engine(db: &TestDb, clock: Arc<ManualClock>) -> Engine {
    Engine::new(
        db.database.journal(),
        Stamps {
            clock,
            ids: Arc::new(SequentialIds::default()),
        },
        Arc::new(JournalNotifier::new()),
        EngineConfig::default(),
    )
}

fn obj(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

#[tokio::test]
async fn the_original_runtime_histories_reproduce_their_trajectory_and_replay_hashes() {
    let corpus: HistoryCorpus = serde_json::from_str(include_str!(
        "../../../replay-fixtures/compat/run_workflow_histories_v1.json"
    ))
    .unwrap();
    assert_eq!(corpus.schema, HISTORY_SCHEMA);
    assert_eq!(corpus.fixtures.len(), 3);
    for fixture in &corpus.fixtures {
        let db = TestDb::sqlite().await;
        let clock = Arc::new(ManualClock::new(fixture.created_at, 0));
        let engine = engine(&db, clock.clone());
        let outcome = reexecute_history(&engine, &clock, fixture).await.unwrap();
        assert_eq!(
            outcome.mismatches(&fixture.expected),
            vec![],
            "{}",
            fixture.id
        );
        assert_eq!(outcome.trajectory_hash, fixture.expected.trajectory_hash);
        assert_eq!(outcome.replay_hash, fixture.expected.replay_hash);
        let text = render_replay(&outcome.record);
        assert_eq!(
            aggregates::canonical::sha256_prefixed(text.as_bytes()),
            fixture.expected.replay_hash
        );
        let parsed = parse_replay(&text).unwrap();
        assert_eq!(
            parsed.events.len() as u64,
            fixture.expected.runtime_event_count
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_run_with_tool_calls_verification_and_payments_gets_a_complete_signed_receipt() {
    let db = TestDb::sqlite().await;
    let clock = Arc::new(ManualClock::new(ts("2026-03-01T10:00:00Z"), 0));
    let engine = engine(&db, clock.clone());
    let ctx = CommandContext {
        actor: "user:42".into(),
        ..CommandContext::default()
    };
    let run = |cmd: RunCommand, at: &str| {
        clock.set(ts(at));
        let engine = &engine;
        let ctx = &ctx;
        async move { engine.execute::<Run>("run_1", cmd, ctx).await.unwrap() }
    };
    let frame = |id: &str, ty: &str, payload: Value| RunCommand::AppendFrame {
        frame_id: FrameId::parse(id).unwrap(),
        frame_type: ty.into(),
        payload: obj(payload),
        occurred_at: None,
        expected_seq: None,
    };
    run(
        RunCommand::CreateRun {
            run_id: RunId::parse("run_1").unwrap(),
            thread_id: ThreadId::parse("thread_1").unwrap(),
            owner: Owner::User(UserId::parse("42").unwrap()),
            metadata: obj(json!({"policy_bundle_id": "policy.tools.v1"})),
            org_id: None,
        },
        "2026-03-01T10:00:00Z",
    )
    .await;
    run(
        RunCommand::StartRun {
            source: "runtime".into(),
        },
        "2026-03-01T10:00:01Z",
    )
    .await;
    run(
        frame(
            "f1",
            "tool_call",
            json!({"tool_call_id": "c1", "name": "shell", "arguments": {"cmd": "ls"}}),
        ),
        "2026-03-01T10:00:02Z",
    )
    .await;
    run(
        frame(
            "f2",
            "tool_result",
            json!({"tool_call_id": "c1", "output": "a\nb", "side_effects": ["fs.read"]}),
        ),
        "2026-03-01T10:00:02.250Z",
    )
    .await;
    run(
        frame(
            "f3",
            "tool_call",
            json!({"tool_call_id": "c2", "name": "http", "params": {"u": 1}}),
        ),
        "2026-03-01T10:00:03Z",
    )
    .await;
    run(
        frame("f4", "tool_result", json!({"tool_call_id": "c2", "is_error": true, "error": {"name": "timeout", "message": "slow"}, "latency_ms": 900})),
        "2026-03-01T10:00:04Z",
    )
    .await;
    run(
        frame(
            "f5",
            "verification",
            json!({"command": "cargo test", "exit_code": 0, "duration_ms": 1200}),
        ),
        "2026-03-01T10:00:05Z",
    )
    .await;
    run(
        frame("f6", "payment", json!({"rail": "lightning", "asset_id": "BTC_LN", "amount_msats": 21000, "payment_proof": {"preimage": "ab"}})),
        "2026-03-01T10:00:06Z",
    )
    .await;
    run(
        frame("f7", "payment", json!({"rail": "lightning", "asset_id": "BTC_LN", "amount_msats": 5, "payment_proof": null, "status": "failed"})),
        "2026-03-01T10:00:06Z",
    )
    .await;
    run(
        RunCommand::FinishRun {
            outcome: RunOutcome::Succeeded,
            reason_class: None,
            reason: None,
            error_code: None,
        },
        "2026-03-01T10:00:07Z",
    )
    .await;

    let record = load_run_record(&engine, "run_1").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Succeeded);
    let signer = ReceiptSigner::from_secret_hex(&"07".repeat(32)).unwrap();
    let receipt = receipt::build_receipt(&record, &[]);
    let value = serde_json::to_value(&receipt).unwrap();
    assert_eq!(value["schema"], "openagents.receipt.v1");
    assert_eq!(value["session_id"], "run_1");
    assert_eq!(value["policy_bundle_id"], "policy.tools.v1");
    assert_eq!(value["created_at"], "2026-03-01T10:00:00+00:00");
    assert_eq!(value["event_count"], 9);
    assert_eq!(
        (value["first_seq"].clone(), value["last_seq"].clone()),
        (json!(1), json!(9))
    );
    assert_eq!(
        value["trajectory_hash"],
        json!(trajectory_hash(&record.events))
    );
    let calls = value["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["tool"], "shell");
    assert_eq!(
        calls[0]["params_hash"],
        json!(aggregates::canonical::hash_canonical(&json!({"cmd": "ls"})))
    );
    assert_eq!(
        calls[0]["output_hash"],
        json!(aggregates::canonical::hash_canonical(&json!("a\nb")))
    );
    assert_eq!(calls[0]["latency_ms"], 250);
    assert_eq!(calls[0]["side_effects"], json!(["fs.read"]));
    assert_eq!(calls[0]["ok"], true);
    assert_eq!(calls[1]["ok"], false);
    assert_eq!(calls[1]["latency_ms"], 900);
    assert_eq!(calls[1]["error"]["name"], "timeout");
    assert_eq!(value["verification"][0]["command"], "cargo test");
    assert_eq!(value["payments"].as_array().unwrap().len(), 2);
    assert_eq!(
        value["payments"][0]["trajectory_hash"],
        value["trajectory_hash"]
    );
    assert_eq!(
        value["metrics"],
        json!({"tool_calls": 2, "tool_latency_ms_total": 1150, "verification_passed": true, "payments_msats_total": 21000})
    );
    assert_eq!(receipt.canonical_json_sha256.len(), 64);
    assert_eq!(receipt.computed_sha256(), receipt.canonical_json_sha256);
    let replay = render_replay(&record);
    assert!(replay.ends_with(
        "{\"type\":\"SessionEnd\",\"ts\":\"2026-03-01T10:00:07+00:00\",\"session_id\":\"run_1\",\"status\":\"success\",\"confidence\":1.0,\"total_tool_calls\":2}\n"
    ));
    assert!(replay.contains(
        "{\"type\":\"RuntimeEvent\",\"ts\":\"2026-03-01T10:00:02.250+00:00\",\"session_id\":\"run_1\",\"seq\":3,\"runtime_event_type\":\"tool_result\""
    ));

    // Recording is idempotent and the recorded receipt is the served one (signed).
    let first = record_receipt(&engine, "run_1", Some(&signer), &[])
        .await
        .unwrap();
    let RecordOutcome::Recorded(recorded) = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        recorded.canonical_json_sha256,
        receipt.canonical_json_sha256
    );
    assert!(verify_receipt_signature(recorded.signature.as_ref().unwrap()).unwrap());
    let again = record_receipt(&engine, "run_1", Some(&signer), &[])
        .await
        .unwrap();
    assert!(matches!(again, RecordOutcome::AlreadyRecorded(_)));
    let (summary, version) = engine.load::<RunReceipt>("run_1").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(
        summary.canonical_json_sha256.as_deref(),
        Some(receipt.canonical_json_sha256.as_str())
    );
    assert_eq!(
        summary.replay_hash.as_deref(),
        Some(replay::replay_hash(&record).as_str())
    );
    db.cleanup().await;
}

#[tokio::test]
async fn an_open_run_gets_no_recorded_receipt_and_a_half_confident_replay() {
    let db = TestDb::sqlite().await;
    let clock = Arc::new(ManualClock::new(ts("2026-03-01T10:00:00Z"), 0));
    let engine = engine(&db, clock.clone());
    let ctx = CommandContext::system("test");
    engine
        .execute::<Run>(
            "run_open",
            RunCommand::CreateRun {
                run_id: RunId::parse("run_open").unwrap(),
                thread_id: ThreadId::parse("t").unwrap(),
                owner: Owner::User(UserId::parse("1").unwrap()),
                metadata: Map::new(),
                org_id: None,
            },
            &ctx,
        )
        .await
        .unwrap();
    let outcome = record_receipt(&engine, "run_open", None, &[])
        .await
        .unwrap();
    assert_eq!(outcome, RecordOutcome::NotTerminal);
    let record = load_run_record(&engine, "run_open").await.unwrap().unwrap();
    assert_eq!(record.header.policy_bundle_id, "runtime.default");
    let replay = render_replay(&record);
    assert!(replay.ends_with("\"status\":\"success\",\"confidence\":0.5,\"total_tool_calls\":0}\n"));
    assert!(matches!(
        record_receipt(&engine, "missing", None, &[]).await,
        Err(RecordError::NotFound)
    ));
    db.cleanup().await;
}

#[tokio::test]
async fn every_appended_event_carries_a_recomputable_chain_link() {
    let db = TestDb::sqlite().await;
    let clock = Arc::new(ManualClock::new(ts("2026-03-01T10:00:00Z"), 1_000));
    let engine = engine(&db, clock.clone());
    let ctx = CommandContext::system("test");
    // A legacy row without chain metadata, written before the chain existed.
    let journal = db.database.journal();
    let legacy = crate::journal::NewEvent {
        event_type: "run.created".into(),
        event_version: "1.0".into(),
        payload: json!({"RunCreated": {"run_id": "run_c", "thread_id": "t", "owner": {"kind": "user", "id": "1"},
                        "metadata": {}, "created_at": "2026-03-01T09:00:00Z"}}),
        metadata: [("recorded_at".to_owned(), "2026-03-01T09:00:00Z".to_owned())].into(),
    };
    journal
        .append(crate::journal::AppendRequest {
            aggregate_type: "run",
            aggregate_id: "run_c",
            expected_sequence: 0,
            events: &[legacy],
            idempotency: None,
            nonce: None,
        })
        .await
        .unwrap();
    engine
        .execute::<Run>(
            "run_c",
            RunCommand::StartRun {
                source: "runtime".into(),
            },
            &ctx,
        )
        .await
        .unwrap();
    engine
        .execute::<Run>(
            "run_c",
            RunCommand::RequestCancel {
                reason: "r".into(),
                requested_by: "u".into(),
            },
            &ctx,
        )
        .await
        .unwrap();
    let stored = journal.load::<Run>("run_c", 0).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored[0].metadata.get(chain::CHAIN_HASH_KEY).is_none());
    let mut prev: Option<String> = None;
    for event in &stored {
        let (content, link) = chain::link(prev.as_deref(), &stored_content(event));
        if event.sequence > 1 {
            assert_eq!(event.metadata[chain::CONTENT_HASH_KEY], json!(content));
            assert_eq!(event.metadata[chain::CHAIN_HASH_KEY], json!(link));
        }
        prev = Some(link);
    }
    db.cleanup().await;
}

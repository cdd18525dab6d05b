//! The worker lease sweeper: a lease that runs out (by the engine's injectable clock) gets the
//! worker marked lost; a renewed lease does not; two sweepers on one journal append one loss.

use std::sync::Arc;
use std::time::Duration;

use aggregates::ids::{Owner, UserId, WorkerId};
use aggregates::worker::{Worker, WorkerCommand};
use engine::clock::{ManualClock, SequentialIds, Stamps};
use engine::notify::JournalNotifier;
use engine::testing::TestDb;
use engine::{CommandContext, Engine, EngineConfig};
use openagents_runtime::sweeper::{sweep_once, LeaseIndex};
use serde_json::json;

use crate::app::{spawn_app_with, Options};
use crate::support::{on_both_backends, read_all_settled, ts};

on_both_backends!(
    a_worker_whose_lease_runs_out_is_marked_lost_by_the_running_sweeper,
    a_heartbeat_without_a_lease_keeps_the_registered_lease,
    two_sweepers_on_one_journal_mark_a_worker_lost_once,
);

async fn a_worker_whose_lease_runs_out_is_marked_lost_by_the_running_sweeper(db: &TestDb) {
    let app = spawn_app_with(
        db,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    let clock = app.clock.clone().unwrap();
    app.create_worker(json!({"worker_id": "w_short", "lease_ttl_ms": 1000}))
        .await;
    app.worker_heartbeat("w_short", json!({"lease_ttl_ms": 1000}))
        .await;
    app.create_worker(json!({"worker_id": "w_long", "lease_ttl_ms": 600000}))
        .await;
    clock.advance_millis(5_000);
    // The sweeper learns of leases through the global read, which can lag commits for a while
    // on a busy cluster (ADR 0002); wait up to 30 s.
    let mut status = String::new();
    for _ in 0..1_200 {
        status = app.worker_snapshot("w_short").await.json["data"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "lost" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "lost");
    let long = app.worker_snapshot("w_long").await;
    assert_eq!(long.json["data"]["status"], "starting");
    assert_eq!(long.json["data"]["heartbeat_state"], "healthy");
    // The loss is a journal event, on the worker's stream.
    let (_, events) = app.worker_stream("w_short", "cursor=2&tail_ms=50").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].json()["eventType"], "worker.lost");
    // A lost worker can be reattached.
    let back = app.create_worker(json!({"worker_id": "w_short"})).await;
    assert_eq!(back.status, 202);
}

/// Issue #15: a heartbeat without `lease_ttl_ms` renewed to the server default (60 s), so a
/// worker registered with a 1.5 s lease that heartbeats with `{}` was not lost for a minute.
async fn a_heartbeat_without_a_lease_keeps_the_registered_lease(db: &TestDb) {
    let app = spawn_app_with(
        db,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    let clock = app.clock.clone().unwrap();
    app.create_worker(json!({"worker_id": "w_brief", "lease_ttl_ms": 1500}))
        .await;
    let started = app.worker_heartbeat("w_brief", json!({})).await;
    assert_eq!(started.status, 202, "{}", started.json);
    clock.advance_millis(1_000);
    // More than half of the 1.5 s lease is used: this one renews, again to 1.5 s.
    let renewed = app.worker_heartbeat("w_brief", json!({})).await;
    assert_eq!(renewed.status, 202, "{}", renewed.json);
    let snapshot = app.worker_snapshot("w_brief").await;
    let expires = ts(snapshot.json["data"]["lease_expires_at"].as_str().unwrap());
    let heartbeat = ts(snapshot.json["data"]["last_heartbeat_at"].as_str().unwrap());
    assert_eq!(expires.millis_since(heartbeat), 1_500, "{}", snapshot.json);
    clock.advance_millis(5_000);
    let mut status = String::new();
    for _ in 0..1_200 {
        status = app.worker_snapshot("w_brief").await.json["data"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "lost" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "lost");
}

fn engine_on(db: &TestDb, clock: Arc<ManualClock>) -> Engine {
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

async fn two_sweepers_on_one_journal_mark_a_worker_lost_once(db: &TestDb) {
    let clock = Arc::new(ManualClock::new(ts("2026-02-01T00:00:00Z"), 1));
    let node_a = engine_on(db, clock.clone());
    let node_b = engine_on(db, clock.clone());
    for id in ["w1", "w2", "w3"] {
        node_a
            .execute::<Worker>(
                id,
                WorkerCommand::RegisterWorker {
                    worker_id: WorkerId::parse(id).unwrap(),
                    owner: Owner::User(UserId::parse("1").unwrap()),
                    org_id: None,
                    adapter: "test".into(),
                    workspace_ref: None,
                    codex_home_ref: None,
                    metadata: Default::default(),
                    lease_ttl_ms: 1_000,
                },
                &CommandContext::system("test"),
            )
            .await
            .unwrap();
    }
    let mut index_a = LeaseIndex::default();
    let mut index_b = LeaseIndex::default();
    // The global read may lag commits while other transactions of the cluster run (ADR 0002):
    // let node A's index see all three workers before the clock moves.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            sweep_once(&node_a, &mut index_a).await.unwrap(),
            0,
            "not due yet"
        );
        if index_a.len() == 3 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(index_a.len(), 3);
    // w3 renews on node B just before expiry; the others lapse.
    clock.advance_millis(900);
    node_b
        .execute::<Worker>(
            "w3",
            WorkerCommand::Heartbeat {
                lease_ttl_ms: Some(60_000),
            },
            &CommandContext::system("test"),
        )
        .await
        .unwrap();
    clock.advance_millis(1_000);
    let (a, b) = tokio::join!(
        sweep_once(&node_a, &mut index_a),
        sweep_once(&node_b, &mut index_b)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 2, "w1 and w2 are lost once each");
    // A later sweep finds nothing more to do.
    clock.advance_millis(1_000);
    assert_eq!(sweep_once(&node_a, &mut index_a).await.unwrap(), 0);
    let all = read_all_settled(&db.database.journal()).await;
    let mut lost: Vec<_> = all
        .iter()
        .filter(|e| e.event.event_type == "worker.lost")
        .map(|e| e.event.aggregate_id.clone())
        .collect();
    lost.sort();
    assert_eq!(lost, ["w1", "w2"]);
}

//! Many HTTP clients commanding the same and different runs at once: every acknowledged frame is
//! in the journal exactly once, each run's seqs are gapless, and concurrent duplicates of one
//! frame are accepted once. Two processes on one journal: a command authorised from one
//! process's cache never acts on a stale view of another's runs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engine::journal::GlobalCursor;
use engine::testing::TestDb;

use crate::app::{database_config, spawn_app, spawn_app_on, Options, TestApp};
use crate::support::{on_both_backends, read_all_settled};

on_both_backends!(
    concurrent_commands_lose_nothing_and_duplicate_nothing,
    concurrent_duplicates_of_one_frame_are_accepted_once,
    shutdown_ends_open_streams_and_drains_cleanly,
    commands_authorised_from_a_cache_see_other_processes_runs,
);

/// Commands check ownership against this process's cached summary when the run is known to
/// exist (owner, thread and tenant never change); a cached "does not exist" is never trusted.
async fn commands_authorised_from_a_cache_see_other_processes_runs(db: &TestDb) {
    let first = spawn_app(db).await;
    let other = engine::Database::connect(&database_config(db))
        .await
        .unwrap();
    let second = spawn_app_on(db, other.clone(), Options::default()).await;
    // The first process looks the run up before it exists (and caches that).
    let missing = first.run_snapshot("run_two_procs", "thread_1").await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    let missing = first.cancel_run("run_two_procs", "thread_1", "early").await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    // The second process creates and starts it; the first commands it at once.
    assert!(second.create_run("run_two_procs", "thread_1").await.status < 300);
    assert!(second.start_run("run_two_procs", "thread_1").await.status < 300);
    let cancel = first.cancel_run("run_two_procs", "thread_1", "now").await;
    assert!(cancel.status < 300, "{}", cancel.text);
    // Another principal is still refused by the process that has it cached.
    let foreign = first
        .post(
            "/internal/v1/runs/run_two_procs/cancel",
            serde_json::json!({"thread_id": "thread_1", "reason": "x"}),
        )
        .user("2")
        .send()
        .await;
    assert_eq!(foreign.status, 403, "{}", foreign.text);
    assert_eq!(foreign.reason(), "not_owner");
    // The second process sees the first's cancellation when it finishes the run.
    let finished = second
        .finish_run("run_two_procs", "thread_1", "canceled")
        .await;
    assert!(finished.status < 300, "{}", finished.text);
    let snapshot = second.run_snapshot("run_two_procs", "thread_1").await;
    assert_eq!(snapshot.json["status"], "canceled", "{}", snapshot.text);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    other.close().await;
}

const TASKS: usize = 12;
const PER_TASK: usize = 15;

async fn concurrent_commands_lose_nothing_and_duplicate_nothing(db: &TestDb) {
    let app = Arc::new(spawn_app(db).await);
    for shared in 0..3 {
        app.running_run(&format!("shared_{shared}")).await;
    }
    for task in 0..TASKS {
        app.running_run(&format!("own_{task}")).await;
    }
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let app: Arc<TestApp> = app.clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_TASK {
                let run = if i % 2 == 0 {
                    format!("shared_{}", (task + i) % 3)
                } else {
                    format!("own_{task}")
                };
                let frame = format!("t{task}_{i}");
                let response = app.text_delta(&run, &frame, &frame).await;
                assert_eq!(response.status, 202, "{}", response.text);
                acked.push((run, frame, response.json["seq"].as_u64().unwrap()));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for handle in handles {
        acked.extend(handle.await.unwrap());
    }
    assert_eq!(acked.len(), TASKS * PER_TASK);
    // The seqs handed out per run are unique.
    let mut seqs: HashMap<&str, HashSet<u64>> = HashMap::new();
    for (run, _, seq) in &acked {
        assert!(
            seqs.entry(run).or_default().insert(*seq),
            "{run} seq {seq} twice"
        );
    }

    // The global read returns every acknowledged frame exactly once, each run in seq order.
    let mut frames = HashSet::new();
    let mut last_sequence: HashMap<String, usize> = HashMap::new();
    let mut cursor = GlobalCursor::START;
    for stored in read_all_settled(&db.database.journal()).await {
        assert!(stored.cursor > cursor, "cursors strictly increase");
        cursor = stored.cursor;
        let last = last_sequence
            .entry(stored.event.aggregate_id.clone())
            .or_insert(0);
        assert_eq!(stored.event.sequence, *last + 1, "gapless per run");
        *last = stored.event.sequence;
        if let Some(frame) = stored.event.payload["FrameAppended"]["frame_id"].as_str() {
            assert!(frames.insert(frame.to_owned()), "{frame} stored twice");
        }
    }
    let expected: HashSet<String> = acked.iter().map(|(_, f, _)| f.clone()).collect();
    assert_eq!(frames, expected);
}

async fn concurrent_duplicates_of_one_frame_are_accepted_once(db: &TestDb) {
    let app = Arc::new(spawn_app(db).await);
    app.running_run("dup_run").await;
    let mut handles = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            app.text_delta("dup_run", "same_frame", "same").await.status
        }));
    }
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 202]);
    let snapshot = app.run_snapshot("dup_run", "thread_1").await;
    assert_eq!(snapshot.json["latestSeq"], 2);
}

async fn shutdown_ends_open_streams_and_drains_cleanly(db: &TestDb) {
    let app = spawn_app(db).await;
    app.running_run("run_open").await;
    let response = app
        .get("/internal/v1/runs/run_open/stream?thread_id=thread_1&cursor=0&tail_ms=600000")
        .send_streaming()
        .await;
    assert_eq!(response.status(), 200);
    let reader = tokio::spawn(async move { response.text().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // `shutdown` fails if the drain outlasts the grace period (10 s here, far below tail_ms):
    // an open stream must end on shutdown rather than hold it.
    app.shutdown()
        .await
        .expect("clean shutdown within the grace period");
    let text = reader
        .await
        .unwrap()
        .expect("the stream ends cleanly, not with an error");
    assert!(text.contains("id: 1"), "{text}");
}

/// Two runtime nodes on one PostgreSQL database, clients spread over both, commanding the same
/// runs: each node's cached aggregates go stale, optimistic concurrency catches it, the engine
/// reloads and retries. Every acknowledged frame is stored once and seqs stay gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_command_the_same_runs_safely() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let nodes = [
        Arc::new(spawn_app(&db).await),
        Arc::new(spawn_app(&db).await),
    ];
    nodes[0].running_run("multi_0").await;
    nodes[1].running_run("multi_1").await;
    let mut handles = Vec::new();
    for task in 0..8 {
        let node = nodes[task % 2].clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..12 {
                let run = format!("multi_{}", i % 2);
                let frame = format!("n{task}_{i}");
                // A client retries a contended command with the same frame id, as it would a
                // timeout: the frame id keeps the retry idempotent.
                loop {
                    let response = node.text_delta(&run, &frame, &frame).await;
                    match response.status {
                        202 | 200 => break,
                        409 if response.reason() == "contended" => continue,
                        _ => panic!("{}", response.text),
                    }
                }
                acked.push(frame);
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for handle in handles {
        acked.extend(handle.await.unwrap());
    }
    let mut frames = HashSet::new();
    let mut last_sequence: HashMap<String, usize> = HashMap::new();
    for stored in read_all_settled(&db.database.journal()).await {
        let last = last_sequence
            .entry(stored.event.aggregate_id.clone())
            .or_insert(0);
        assert_eq!(stored.event.sequence, *last + 1, "gapless per run");
        *last = stored.event.sequence;
        if let Some(frame) = stored.event.payload["FrameAppended"]["frame_id"].as_str() {
            assert!(frames.insert(frame.to_owned()), "{frame} stored twice");
        }
    }
    assert_eq!(frames, acked);
    // Both nodes agree on the result.
    for node in &nodes {
        let snapshot = node.run_snapshot("multi_0", "thread_1").await;
        assert_eq!(snapshot.json["latestSeq"], 1 + 8 * 6);
    }
    drop(nodes);
    db.cleanup().await;
}

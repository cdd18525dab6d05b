//! Crash safety of the real binary: a child `openagents-runtime serve` under command load from
//! several clients is killed with SIGKILL; after a restart on the same journal, every command
//! that got a 2xx is in the journal, none twice, and retrying every command (acknowledged or
//! not) still leaves each exactly once. Each command's token nonce is recorded in the command's own
//! append, so the token of every stored command (acknowledged or not) is refused as a replay after
//! the restart. The restarted child is then stopped with SIGTERM and must drain and exit 0.
//!
//! Appends without a nonce or an idempotency record (a receipt, a sweep) take another path on the
//! embedded journal when they arrive alone: one autocommit statement instead of the group commit's
//! transaction. A child process appending those one at a time is killed the same way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::testing::TestDb;
use serde_json::json;

use engine::auth::InternalClaims;

use crate::app::{now_unix, token};
use crate::child::ServeChild;
use crate::support::{on_both_backends, read_all_settled};

on_both_backends!(
    acknowledged_commands_survive_sigkill_exactly_once,
    lone_appends_survive_sigkill_exactly_once,
);

const CLIENTS: usize = 6;
const RUNS: usize = 3;
const PER_CLIENT: usize = 400;
/// Kill once this many commands have been acknowledged (so the kill lands mid-load).
const KILL_AFTER_ACKS: usize = 60;

fn start_child(db: &TestDb, data_dir: &std::path::Path) -> ServeChild {
    ServeChild::start(db, data_dir, &[])
}

/// A token for user 1 that stays valid for the whole test (its replay after the restart must be
/// refused as a replay, not as expired).
fn long_token() -> String {
    token(&InternalClaims {
        user_id: Some("1".into()),
        ..InternalClaims::new(now_unix(), 600)
    })
}

async fn post_frame(
    http: &reqwest::Client,
    base: &str,
    run: &str,
    frame: &str,
) -> Result<u16, reqwest::Error> {
    post_frame_with(http, base, run, frame, &long_token())
        .await
        .map(|(status, _)| status)
}

/// Posts a frame with `token`; the status and the error reason, if any.
async fn post_frame_with(
    http: &reqwest::Client,
    base: &str,
    run: &str,
    frame: &str,
    token: &str,
) -> Result<(u16, String), reqwest::Error> {
    let response = http
        .post(format!("{base}/internal/v1/runs/{run}/frames"))
        .header("x-oa-runtime-signature", token)
        .header("x-oa-user-id", "1")
        .json(
            &json!({"thread_id": "thread_1", "frame_id": frame, "type": "text_delta",
                      "payload": {"delta": frame}}),
        )
        .timeout(Duration::from_secs(20))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let reason = body["error"]["details"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((status, reason))
}

async fn acknowledged_commands_survive_sigkill_exactly_once(db: &TestDb) {
    let data_dir = db
        .data_dir
        .clone()
        .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
    let child = start_child(db, &data_dir);
    let http = reqwest::Client::new();
    let acks = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let http = http.clone();
        let base = child.base.clone();
        let acks = acks.clone();
        clients.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut attempted = Vec::new();
            for i in 0..PER_CLIENT {
                let run = format!("crash_run_{}", (client + i) % RUNS);
                let frame = format!("c{client}_{i}");
                let token = long_token();
                attempted.push((run.clone(), frame.clone(), token.clone()));
                match post_frame_with(&http, &base, &run, &frame, &token).await {
                    Ok((status, _)) if (200..300).contains(&status) => {
                        acked.push((run, frame));
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, _)) => panic!("unexpected status {status} before the crash"),
                    // The server died under us: this command's outcome is unknown.
                    Err(_) => break,
                }
            }
            (acked, attempted)
        }));
    }
    while acks.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill_9();
    let mut acked = Vec::new();
    let mut attempted = Vec::new();
    for handle in clients {
        let (a, t) = handle.await.unwrap();
        acked.extend(a);
        attempted.extend(t);
    }
    drop(child);
    assert!(acked.len() >= KILL_AFTER_ACKS);
    assert!(
        attempted.len() < CLIENTS * PER_CLIENT,
        "the kill must land while commands are still being sent"
    );

    // Restart on the same journal: every acknowledged frame is there, none twice.
    let restarted = start_child(db, &data_dir);
    let stored = stored_frames(db).await;
    for (run, frame) in &acked {
        assert_eq!(
            stored.get(frame).map(|(r, n)| (r.as_str(), *n)),
            Some((run.as_str(), 1)),
            "acknowledged frame {frame} must be stored exactly once"
        );
    }
    assert!(
        stored.values().all(|(_, n)| *n == 1),
        "a frame stored twice"
    );
    let attempted_ids: HashSet<&String> = attempted.iter().map(|(_, f, _)| f).collect();
    assert!(stored.keys().all(|f| attempted_ids.contains(f)));

    // The token of every stored command was recorded with it: replaying it (same request, same
    // token) is refused and appends nothing, whether or not the client saw the answer.
    for (run, frame, token) in &attempted {
        if !stored.contains_key(frame) {
            continue;
        }
        let (status, reason) = post_frame_with(&http, &restarted.base, run, frame, token)
            .await
            .unwrap();
        assert_eq!(
            (status, reason.as_str()),
            (401, "replayed_nonce"),
            "the token of stored frame {frame} must be spent"
        );
    }

    // Retrying everything that was attempted (the clients' recovery) converges on exactly once.
    for (run, frame, _) in &attempted {
        let status = post_frame(&http, &restarted.base, run, frame)
            .await
            .unwrap();
        let was_stored = stored.contains_key(frame);
        assert_eq!(status, if was_stored { 200 } else { 202 }, "{frame}");
    }
    let after = stored_frames(db).await;
    assert_eq!(after.len(), attempted.len());
    assert!(after.values().all(|(_, n)| *n == 1));

    // A graceful stop of the restarted child: SIGTERM, drain, exit 0.
    let status = restarted.terminate().await;
    assert!(
        status.success(),
        "SIGTERM must shut down cleanly: {status:?}"
    );
}

/// frame_id → (run, how many times it is stored), read through the gap-safe global read; also
/// checks that every run's journal sequences are gapless.
async fn stored_frames(db: &TestDb) -> HashMap<String, (String, usize)> {
    let mut frames: HashMap<String, (String, usize)> = HashMap::new();
    let mut last_sequence: HashMap<String, usize> = HashMap::new();
    for stored in read_all_settled(&db.database.journal()).await {
        let last = last_sequence
            .entry(stored.event.aggregate_id.clone())
            .or_insert(0);
        assert_eq!(stored.event.sequence, *last + 1);
        *last = stored.event.sequence;
        if let Some(frame) = stored.event.payload["FrameAppended"]["frame_id"].as_str() {
            frames
                .entry(frame.to_owned())
                .or_insert_with(|| (stored.event.aggregate_id.clone(), 0))
                .1 += 1;
        }
    }
    frames
}

const LONE_CHILD_ENV: &str = "OA_LONE_APPENDER_CHILD";
/// Kill the lone appender once it has acknowledged this many appends.
const LONE_KILL_AFTER: u64 = 150;

/// The child side of [`lone_appends_survive_sigkill_exactly_once`]: appends events one at a time
/// (one event each, no nonce, no idempotency record) to one aggregate of the journal the parent
/// names, printing each acknowledged sequence on its own line, until killed. Does nothing unless
/// started by that test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by lone_appends_survive_sigkill_exactly_once"]
async fn child_lone_appender() {
    use std::io::Write;

    use engine::journal::{AppendRequest, Journal};
    use engine::Database;

    let Ok(spec) = std::env::var(LONE_CHILD_ENV) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let journal = Database::connect(&crate::child::database_config(&spec, 2))
        .await
        .unwrap()
        .journal();
    let mut out = std::io::stdout().lock();
    for sequence in 0u64.. {
        let event = crate::support::raw_event(&sequence.to_string());
        journal
            .append(AppendRequest {
                aggregate_type: "run",
                aggregate_id: "lone",
                expected_sequence: sequence,
                events: std::slice::from_ref(&event),
                idempotency: None,
                nonce: None,
            })
            .await
            .unwrap();
        writeln!(out, "{}", sequence + 1).unwrap();
        out.flush().unwrap();
    }
}

/// A process appending lone single-event appends is killed with SIGKILL mid-stream: every append
/// it acknowledged is in the journal, in order, none twice, at most the one in flight beyond the
/// last acknowledgement, and the journal takes the next append after it.
async fn lone_appends_survive_sigkill_exactly_once(db: &TestDb) {
    use std::io::BufRead;

    use engine::journal::{AppendRequest, Journal};
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let mut child = crate::child::spawn_test_process(
        "crash::child_lone_appender",
        LONE_CHILD_ENV,
        &crate::child::database_spec(db),
        std::process::Stdio::piped(),
    );
    let stdout = child.stdout.take().unwrap();
    let acknowledged = tokio::task::spawn_blocking(move || {
        let mut last = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness prints its own lines; acknowledgements are bare numbers.
            if let Ok(n) = line.trim().parse::<u64>() {
                last = n;
                if n >= LONE_KILL_AFTER {
                    break;
                }
            }
        }
        last
    });
    let acknowledged = tokio::time::timeout(Duration::from_secs(120), acknowledged)
        .await
        .expect("the appender acknowledges appends")
        .unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    assert!(
        acknowledged >= LONE_KILL_AFTER,
        "the appender stopped after {acknowledged} appends"
    );

    let journal = db.database.journal();
    let stored = journal
        .load::<aggregates::run::Run>("lone", 0)
        .await
        .unwrap();
    let labels: Vec<String> = stored
        .iter()
        .map(|e| e.payload["label"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..stored.len()).map(|n| n.to_string()).collect();
    assert_eq!(labels, expected, "in order, none twice, no gap");
    let count = stored.len() as u64;
    assert!(
        count >= acknowledged,
        "{count} stored, {acknowledged} acknowledged"
    );
    // Appends kept going between the last line read and the kill; none of them may be half
    // there, and the journal takes the next one.
    journal
        .append(AppendRequest {
            aggregate_type: "run",
            aggregate_id: "lone",
            expected_sequence: count,
            events: &[crate::support::raw_event(&count.to_string())],
            idempotency: None,
            nonce: None,
        })
        .await
        .unwrap();
}

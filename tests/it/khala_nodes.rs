//! Many Khala nodes: two real `openagents-runtime serve` processes on one PostgreSQL database.
//! Commands go to either node; clients on both receive every delta although only one node (the
//! projector-lease holder, sampled every 25 ms) projects: the other is woken by the
//! cross-process `NOTIFY` relay (its tailers' fallback poll is set to an hour, so nothing else
//! could wake them within the test) and reads the shared store. Then the lease holder is SIGKILLed: the survivor takes the leases over
//! within seconds and its clients keep receiving, with no gap and no duplicate; the dead node's
//! client reconnects to the survivor and resumes from its last watermark.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::testing::TestDb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use projectors::SyncStore;
use serde_json::{json, Value};
use sync_gateway::auth::mint::{mint, MintRequest};
use sync_gateway::client::{ClientError, KhalaClient, Push};
use sync_gateway::protocol::Update;
use sync_gateway::test_utils::{auth_config, now_secs, TEST_KID, TEST_SECRET as SYNC_SECRET};

use crate::app::{claims, token, TEST_SECRET};
use crate::khala_e2e::{
    assert_delivered_exactly, eventually, hydrate, joined, owned_rows, run_key, updates_until,
    watermarks, Who, RUNS,
};

/// A `serve` child; killed (SIGKILL) and reaped on drop.
pub(crate) struct Node {
    child: Child,
    pub(crate) base: String,
    pid: u32,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts `serve` on port 0 over `url` and waits for its "listening on" line.
    fn start(url: &str, data_dir: &std::path::Path) -> Node {
        Self::start_with(url, data_dir, &["--projector-lease-ttl", "1s"])
    }

    /// [`Node::start`] with `extra` arguments for `serve`.
    pub(crate) fn start_with(url: &str, data_dir: &std::path::Path, extra: &[&str]) -> Node {
        let log = std::env::var_os("TEST_LOG").is_some();
        let mut child = Command::new(env!("CARGO_BIN_EXE_openagents-runtime"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--database-url", url])
            .args(["--db-max-connections", "8"])
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--shutdown-grace-secs", "5"])
            .args(["--projector-poll", "100ms"])
            // Deliveries on a node that does not project can only come from NOTIFY wake-ups.
            .args(["--sync-tailer-poll", "1h"])
            .args(extra)
            .env("OA_RUNTIME_SIGNATURE_SECRET", TEST_SECRET)
            .env("OA_AUDIT_KEY", crate::audit_log::TEST_AUDIT_KEY)
            .env("OA_SYNC_JWT_KEY", format!("{TEST_KID}={SYNC_SECRET}"))
            .env_remove("DATABASE_URL")
            .env_remove("READ_DATABASE_URL")
            .env("RUST_LOG", if log { "info" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn openagents-runtime serve");
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the node prints where it listens")
                .expect("readable stdout");
            if let Some(rest) = line.strip_prefix("openagents-runtime listening on ") {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Node { child, base, pid }
    }
}

/// A sync token for `who`, valid on every node (they share the key).
pub(crate) fn sync_token(who: &Who) -> String {
    let known: Vec<String> = projectors::all_specs()
        .iter()
        .map(|s| s.topic.to_owned())
        .collect();
    mint(
        &auth_config(),
        &known,
        &MintRequest {
            subject: format!("user:{}", who.user.expect("a user")),
            scopes: vec![RUNS.to_owned()],
            ..MintRequest::default()
        },
        now_secs(),
    )
    .expect("sync token")
    .token
}

/// Sends a command to `base` as user `user`; returns the status.
pub(crate) async fn command(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    path: &str,
    body: Value,
) -> u16 {
    let mut claims = claims();
    claims.user_id = Some(user.to_owned());
    let response = http
        .post(format!("{base}{path}"))
        .header("x-oa-runtime-signature", token(&claims))
        .header("x-oa-user-id", user)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} on {base}: {e}"));
    response.status().as_u16()
}

pub(crate) async fn ok(http: &reqwest::Client, base: &str, user: &str, path: &str, body: Value) {
    let status = command(http, base, user, path, body).await;
    assert!((200..300).contains(&status), "{path} on {base}: {status}");
}

pub(crate) fn frame(run: &str, id: &str) -> (String, Value) {
    (
        format!("/internal/v1/runs/{run}/frames"),
        json!({"thread_id": "thread_1", "frame_id": id, "type": "text_delta", "payload": {"delta": id}}),
    )
}

/// The pids of the processes holding each projector's lease (from the lease owner's
/// `<pid>-<id>` form); `None` for a free lease.
async fn lease_pids(store: &SyncStore) -> Vec<Option<u32>> {
    store
        .checkpoints()
        .await
        .expect("checkpoints")
        .iter()
        .map(|c| {
            c.lease_owner
                .as_deref()
                .filter(|_| c.lease_expires_at_ms > projectors::runner::now_ms())
                .and_then(|o| o.split('-').next())
                .and_then(|pid| pid.parse().ok())
        })
        .collect()
}

async fn wait_for_leases(store: &SyncStore, pid: u32) {
    let count = projectors::all_specs().len();
    eventually(&format!("every projector lease held by {pid}"), || async {
        let pids = lease_pids(store).await;
        (pids.len() == count && pids.iter().all(|p| *p == Some(pid))).then_some(())
    })
    .await;
}

/// True once `run` has a succeeded version carrying its receipt (recorded by `serve` after the
/// finish): the run's last document version.
pub(crate) fn receipted(updates: &[Update], run: &str) -> bool {
    let key = run_key(run);
    updates.iter().any(|u| {
        u.doc_key == key
            && u.payload
                .as_ref()
                .is_some_and(|p| p["status"] == "succeeded" && !p["receipt"].is_null())
    })
}

/// Reads until the socket ends (the node died); returns the updates that arrived first.
async fn drain_until_closed(client: &mut KhalaClient) -> Vec<Update> {
    let mut updates = Vec::new();
    loop {
        match client.next_push().await {
            Ok(Push::Batch { batch, .. }) => updates.extend(batch.updates),
            Ok(_) => {}
            Err(ClientError::Closed(_) | ClientError::WebSocket(_)) => return updates,
            Err(other) => panic!("expected the dead node's socket to close, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_database_both_deliver_and_survive_the_leader_dying() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone().expect("a PostgreSQL URL");
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = SyncStore::new(&db.database, projectors::all_specs());
    let http = reqwest::Client::new();
    let (alice, bob) = (Who::user("1"), Who::user("2"));

    // Node A starts first and takes every projector lease; node B follows.
    let a = Node::start(&url, dirs.0.path());
    wait_for_leases(&store, a.pid).await;
    let b = Node::start(&url, dirs.1.path());
    // Until the kill, sample who holds the leases: node B must never project.
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (store, stop, b_pid) = (store.clone(), sampling.clone(), b.pid);
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.is_cancelled() {
                let pids = lease_pids(&store).await;
                assert!(
                    pids.iter().all(|p| *p != Some(b_pid)),
                    "node B took a lease while node A was alive: {pids:?}"
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            samples
        })
    };

    // Alice watches from both nodes, each hydrated from its own node.
    let token = sync_token(&alice);
    let mut on_a = joined(&a.base, &token).await;
    let mut on_b = joined(&b.base, &token).await;
    let hydrated_a = hydrate(&a.base, &token, RUNS).await;
    let hydrated_b = hydrate(&b.base, &token, RUNS).await;
    on_a.subscribe_from(&[(RUNS, Some(hydrated_a.watermark))])
        .await
        .unwrap()
        .unwrap();
    on_b.subscribe_from(&[(RUNS, Some(hydrated_b.watermark))])
        .await
        .unwrap()
        .unwrap();

    // Commands alternate between the nodes; bob's rows interleave.
    let nodes = [&a.base, &b.base];
    for (i, (user, run)) in [("1", "nodes_a1"), ("2", "nodes_b1")].iter().enumerate() {
        ok(
            &http,
            nodes[i % 2],
            user,
            "/internal/v1/runs",
            json!({"run_id": run, "thread_id": "thread_1"}),
        )
        .await;
        ok(
            &http,
            nodes[(i + 1) % 2],
            user,
            &format!("/internal/v1/runs/{run}/start"),
            json!({"thread_id": "thread_1"}),
        )
        .await;
    }
    for i in 0..10 {
        let (path, body) = frame("nodes_a1", &format!("a{i}"));
        ok(&http, nodes[i % 2], "1", &path, body).await;
        let (path, body) = frame("nodes_b1", &format!("b{i}"));
        ok(&http, nodes[(i + 1) % 2], "2", &path, body).await;
    }
    for (node, user, run) in [(&b.base, "1", "nodes_a1"), (&a.base, "2", "nodes_b1")] {
        ok(
            &http,
            node,
            user,
            &format!("/internal/v1/runs/{run}/finish"),
            json!({"thread_id": "thread_1", "status": "succeeded"}),
        )
        .await;
    }
    let first_a = updates_until(&mut on_a, "the run's receipt on node A", |u| {
        receipted(u, "nodes_a1")
    })
    .await;
    let first_b = updates_until(&mut on_b, "the run's receipt on node B", |u| {
        receipted(u, "nodes_a1")
    })
    .await;
    let truth = owned_rows(&store, RUNS, hydrated_a.watermark, &alice).await;
    assert_eq!(hydrated_a.watermark, hydrated_b.watermark);
    assert_eq!(
        truth.len(),
        1 + 1 + 10 + 1 + 1,
        "created, started, frames, finish, receipt"
    );
    assert_delivered_exactly(&first_a, &truth);
    assert_delivered_exactly(&first_b, &truth);
    // Node B delivered everything without projecting (its tailers were woken by NOTIFY only).
    wait_for_leases(&store, a.pid).await;
    eventually(
        "bob's run projected (created, started, 10 frames, finish)",
        || async { (owned_rows(&store, RUNS, 0, &bob).await.len() >= 13).then_some(()) },
    )
    .await;

    // Commands keep going to node B while node A (the projector) is SIGKILLed.
    ok(
        &http,
        &b.base,
        "1",
        "/internal/v1/runs",
        json!({"run_id": "nodes_a2", "thread_id": "thread_1"}),
    )
    .await;
    ok(
        &http,
        &b.base,
        "1",
        "/internal/v1/runs/nodes_a2/start",
        json!({"thread_id": "thread_1"}),
    )
    .await;
    const FRAMES: usize = 40;
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (http, base, acked) = (http.clone(), b.base.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..FRAMES {
                let (path, body) = frame("nodes_a2", &format!("k{i}"));
                ok(&http, &base, "1", &path, body).await;
                acked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    while acked.load(Ordering::SeqCst) < FRAMES / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sampling.cancel();
    let samples = sampler
        .await
        .expect("node B never held a lease while node A lived");
    assert!(samples > 10, "{samples} lease samples");
    kill(Pid::from_raw(a.pid as i32), Signal::SIGKILL).expect("SIGKILL node A");
    let killed_at = Instant::now();
    let dead_pid = a.pid;
    drop(a);

    // Node B takes the leases over within seconds (1 s TTL).
    wait_for_leases(&store, b.pid).await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_secs(15),
        "takeover took {takeover:?}"
    );
    assert!(lease_pids(&store)
        .await
        .iter()
        .all(|p| *p != Some(dead_pid)));

    // The dead node's client sees its socket end, reconnects to node B and resumes from the
    // last watermark it received.
    let mut seen_on_a = first_a;
    seen_on_a.extend(drain_until_closed(&mut on_a).await);
    let resume_at = seen_on_a
        .last()
        .map_or(hydrated_a.watermark, |u| u.watermark);
    let mut moved = joined(&b.base, &token).await;
    moved
        .subscribe_from(&[(RUNS, Some(resume_at))])
        .await
        .unwrap()
        .unwrap();

    writer.await.unwrap();
    ok(
        &http,
        &b.base,
        "1",
        "/internal/v1/runs/nodes_a2/finish",
        json!({"thread_id": "thread_1", "status": "succeeded"}),
    )
    .await;
    let after_b = updates_until(&mut on_b, "the second run's receipt on node B", |u| {
        receipted(u, "nodes_a2")
    })
    .await;
    let after_moved = updates_until(&mut moved, "the second run's receipt after moving", |u| {
        receipted(u, "nodes_a2")
    })
    .await;
    let truth = owned_rows(&store, RUNS, hydrated_a.watermark, &alice).await;
    assert_eq!(truth.len(), 14 + 1 + 1 + FRAMES + 1 + 1);
    let mut all_b = first_b;
    all_b.extend(after_b);
    assert_delivered_exactly(&all_b, &truth);
    seen_on_a.extend(after_moved);
    assert_delivered_exactly(&seen_on_a, &truth);

    // And node B, now the projector, delivers a fresh commit at once.
    let sent = Instant::now();
    ok(
        &http,
        &b.base,
        "1",
        "/internal/v1/runs",
        json!({"run_id": "nodes_a3", "thread_id": "thread_1"}),
    )
    .await;
    let fresh = updates_until(&mut on_b, "a fresh run", |u| !u.is_empty()).await;
    assert_eq!(fresh[0].doc_key, run_key("nodes_a3"));
    assert!(fresh[0].watermark > truth.last().unwrap().watermark);
    eprintln!(
        "two nodes: takeover {takeover:?} after SIGKILL; a fresh commit reached node B's client in {:?}; {} updates on B ({:?}…)",
        sent.elapsed(),
        all_b.len(),
        &watermarks(&all_b)[..3]
    );
    drop(b);
    db.cleanup().await;
}

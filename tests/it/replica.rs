//! Reads from a hot standby (`serve --read-database-url`, docs/adr/0125-read-replicas.md), on two
//! real PostgreSQL 15 clusters this test builds for itself: its own primary (`initdb`,
//! `wal_level=replica`) and a streaming standby of it (`pg_basebackup -R`), each on its own
//! port, run as the `postgres` user when the test runs as root, killed and removed at the end.
//!
//! One node writes to the primary and reads Khala's stream and hydration from the standby. Its
//! tailers' fallback poll is an hour, so every delivery comes from a wake-up (the local
//! projector's commit) that reaches the node before the standby has replayed the commit.
//! The test pauses the standby's replay to hold it behind for certain, hands a client a
//! watermark only the primary has, then SIGKILLs the standby under a write load and restarts
//! it. Every client receives exactly the store's rows in watermark order; no command fails.
//!
//! Without PostgreSQL's server binaries (`OA_TEST_PG_BIN`, default
//! `/usr/lib/postgresql/15/bin`) the test is skipped with a message, and fails under `CI`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Database, DatabaseConfig};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use projectors::SyncStore;
use serde_json::{json, Value};
use sync_gateway::client::{ClientError, KhalaClient, Push};
use sync_gateway::protocol::{ErrorCode, Update};

use crate::khala_e2e::{
    assert_delivered_exactly, eventually, hydrate, joined, owned_rows, run_key, updates_until, Who,
    RUNS,
};
use crate::khala_nodes::{frame, ok, receipted, sync_token, Node};

/// Where the PostgreSQL server binaries are.
fn pg_bin() -> PathBuf {
    std::env::var_os("OA_TEST_PG_BIN").map_or_else(
        || PathBuf::from("/usr/lib/postgresql/15/bin"),
        PathBuf::from,
    )
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a probe port")
        .local_addr()
        .expect("probe address")
        .port()
}

/// Who runs the clusters: PostgreSQL refuses to run as root, so as root the `postgres` user.
#[derive(Clone, Copy)]
struct RunAs {
    ids: Option<(u32, u32)>,
}

impl RunAs {
    fn detect() -> Result<Self, String> {
        let me = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("id -u: {e}"))?;
        if String::from_utf8_lossy(&me.stdout).trim() != "0" {
            return Ok(Self { ids: None });
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .map_err(|e| format!("id {flag} postgres: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| "running as root and there is no postgres user".to_owned())
        };
        Ok(Self {
            ids: Some((id("-u")?, id("-g")?)),
        })
    }

    fn command(self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command.env_remove("PGDATA").env("LC_ALL", "C");
        command
    }

    fn own(self, path: &Path) {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }
}

/// The node's `runtime_sync_replica_lag_watermarks` gauge for the run-summaries topic.
async fn replica_lag(base: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("runtime_sync_replica_lag_watermarks{")
                && l.contains(&format!("\"{RUNS}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no replica lag gauge for {RUNS} in /metrics"))
}

/// One PostgreSQL cluster run as a child process in its own process group (so a SIGKILL takes
/// the postmaster and every backend at once, like a crashed machine).
struct Cluster {
    name: &'static str,
    data: PathBuf,
    sockets: PathBuf,
    log: PathBuf,
    port: u16,
    settings: Vec<String>,
    child: Option<Child>,
}

impl Cluster {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster and waits until it accepts queries (a standby: once consistent).
    async fn start(&mut self, run_as: RunAs) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("{}: {e}", self.log.display()))?;
            let mut command = run_as.command(&pg_bin().join("postgres"));
            command
                .arg("-D")
                .arg(&self.data)
                .args(["-p", &self.port.to_string()])
                .arg("-k")
                .arg(&self.sockets)
                .args(["-c", "listen_addresses=127.0.0.1"]);
            for setting in &self.settings {
                command.args(["-c", setting]);
            }
            {
                use std::os::unix::process::CommandExt;
                command.process_group(0);
            }
            let mut child = command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("spawn postgres ({}): {e}", self.name))?;
            loop {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    // A restart right after a SIGKILL can find the old backends still
                    // detaching from shared memory: try again shortly.
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{} exited with {status}: {}",
                            self.name,
                            self.log_tail()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                let ready = sqlx::Connection::connect(&self.url())
                    .await
                    .map(|c: sqlx::PgConnection| drop(c))
                    .is_ok();
                if ready {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let _ = child.wait();
                    return Err(format!("{} never accepted: {}", self.name, self.log_tail()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILL to the postmaster and all its processes, and reap it.
    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// A primary and its streaming standby in one temporary directory. Dropping it kills both
/// clusters and removes the directory.
struct Clusters {
    run_as: RunAs,
    primary: Cluster,
    standby: Cluster,
    _dir: tempfile::TempDir,
}

impl Drop for Clusters {
    fn drop(&mut self) {
        self.standby.kill_9();
        self.primary.kill_9();
    }
}

/// Runs a setup command to completion, its output written to `log`.
fn run(mut command: Command, what: &str, log: &Path) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    let _ = std::fs::write(
        log,
        [output.stdout.as_slice(), output.stderr.as_slice()].concat(),
    );
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Clusters {
    /// initdb + start the primary, pg_basebackup + start the standby.
    async fn start() -> Result<Clusters, String> {
        if !pg_bin().join("pg_basebackup").exists() {
            return Err(format!(
                "no PostgreSQL server binaries in {} (set OA_TEST_PG_BIN)",
                pg_bin().display()
            ));
        }
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("oa-replica-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        run_as.own(dir.path());
        let cluster = |name: &'static str, settings: &[&str]| Cluster {
            name,
            data: dir.path().join(name),
            sockets: dir.path().to_path_buf(),
            log: dir.path().join(format!("{name}.log")),
            port: free_port(),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        // Small and fast: no fsync (nothing here must survive the machine), few connections.
        let common = [
            "fsync=off",
            "max_connections=50",
            "shared_buffers=16MB",
            "max_wal_senders=4",
            "wal_keep_size=256MB",
        ];
        let primary = cluster("primary", &[&common[..], &["wal_level=replica"]].concat());
        let standby = cluster(
            "standby",
            &[&common[..], &["hot_standby=on", "hot_standby_feedback=on"]].concat(),
        );
        let dir_path = dir.path().to_path_buf();
        // Owned by the guard before anything starts: a failure below still stops what ran.
        let mut clusters = Clusters {
            run_as,
            primary,
            standby,
            _dir: dir,
        };
        let mut initdb = run_as.command(&pg_bin().join("initdb"));
        initdb.arg("-D").arg(&clusters.primary.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb", &dir_path.join("initdb.log"))?;
        clusters.primary.start(run_as).await?;
        let mut basebackup = run_as.command(&pg_bin().join("pg_basebackup"));
        basebackup
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &clusters.primary.port.to_string()])
            .arg("-D")
            .arg(&clusters.standby.data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(
            basebackup,
            "pg_basebackup",
            &dir_path.join("basebackup.log"),
        )?;
        clusters.standby.start(run_as).await?;
        Ok(clusters)
    }

    async fn standby_sql(&self, sql: &str) -> Value {
        let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&self.standby.url())
            .await
            .expect("connect to the standby");
        let row: (Option<String>,) = sqlx::query_as(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql} on the standby: {e}"));
        json!(row.0)
    }
}

/// A `serve` child over the primary that reads the standby (every delivery from a wake-up,
/// never from the fallback poll); killed on drop.
fn start_node(primary: &str, replica: &str, data_dir: &Path) -> Node {
    Node::start_with(
        primary,
        data_dir,
        &[
            "--read-database-url",
            replica,
            "--read-db-max-connections",
            "8",
            "--sync-replica-wait",
            "1s",
        ],
    )
}

/// `GET /sync/v1/topics/{RUNS}/docs?{query}`: status and body.
async fn hydrate_raw(base: &str, token: &str, query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/sync/v1/topics/{RUNS}/docs?{query}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("hydration request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every update that arrives within `quiet`; heartbeats are skipped, anything else fails.
async fn updates_within(client: &mut KhalaClient, quiet: Duration) -> Vec<Update> {
    let mut updates = Vec::new();
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, client.next_push()).await {
            Err(_) => return updates,
            Ok(Ok(Push::Batch { batch, .. })) => updates.extend(batch.updates),
            Ok(Ok(Push::Heartbeat(_))) => {}
            Ok(Ok(other)) => panic!("unexpected push {other:?}"),
            Ok(Err(e @ (ClientError::Closed(_) | ClientError::WebSocket(_)))) => {
                panic!("the session ended: {e}")
            }
            Ok(Err(e)) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reading_a_hot_standby_delivers_every_update_once_and_survives_the_standby_dying() {
    let clusters = match Clusters::start().await {
        Ok(clusters) => clusters,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the read-replica test: {e}");
            return;
        }
        Err(e) => panic!("cannot set up a primary and a streaming standby: {e}"),
    };
    let mut clusters = clusters;
    let primary_db = Database::connect(&DatabaseConfig::Postgres {
        url: clusters.primary.url(),
        max_connections: 4,
    })
    .await
    .expect("connect to the primary");
    let data_dir = tempfile::tempdir().unwrap();
    let node = start_node(
        &clusters.primary.url(),
        &clusters.standby.url(),
        data_dir.path(),
    );
    // The node migrated the primary; the truth is the primary's store.
    let store = SyncStore::new(&primary_db, projectors::all_specs());
    let http = reqwest::Client::new();
    let alice = Who::user("1");
    let token = sync_token(&alice);
    let base = node.base.clone();

    // 1. Hydrate from the standby, subscribe, write on the primary: everything arrives once.
    let hydrated = hydrate(&base, &token, RUNS).await;
    let mut live = joined(&base, &token).await;
    live.subscribe_from(&[(RUNS, Some(hydrated.watermark))])
        .await
        .unwrap()
        .unwrap();
    for (user, run) in [("1", "replica_a"), ("2", "replica_b")] {
        ok(
            &http,
            &base,
            user,
            "/internal/v1/runs",
            json!({"run_id": run, "thread_id": "thread_1"}),
        )
        .await;
        ok(
            &http,
            &base,
            user,
            &format!("/internal/v1/runs/{run}/start"),
            json!({"thread_id": "thread_1"}),
        )
        .await;
    }
    for i in 0..10 {
        for (user, run) in [("1", "replica_a"), ("2", "replica_b")] {
            let (path, body) = frame(run, &format!("f{i}"));
            ok(&http, &base, user, &path, body).await;
        }
    }
    let wanted = 1 + 1 + 10;
    let mut seen =
        updates_until(&mut live, "alice's first 12 updates", |u| u.len() >= wanted).await;
    let truth = owned_rows(&store, RUNS, hydrated.watermark, &alice).await;
    assert_eq!(truth.len(), wanted, "created, started, 10 frames");
    assert_delivered_exactly(&seen, &truth);

    // Hydration from the standby shows the same document as the primary.
    let doc = |h: &sync_gateway::http::HydrateResponse| {
        h.docs
            .iter()
            .find(|d| d.doc_key == run_key("replica_a"))
            .map(|d| (d.doc_version, d.payload_hash.clone()))
    };
    let last = truth.last().unwrap();
    eventually("the standby's hydration to show the last frame", || async {
        let h = hydrate(&base, &token, RUNS).await;
        (doc(&h) == Some((last.doc_version, last.payload_hash.clone()))).then_some(())
    })
    .await;

    // 2. The standby stops replaying: commands still succeed on the primary, and nothing the
    // standby has not replayed is delivered or hydrated.
    clusters
        .standby_sql("SELECT pg_wal_replay_pause()::text")
        .await;
    eventually("the standby's replay to pause", || async {
        (clusters
            .standby_sql("SELECT pg_get_wal_replay_pause_state()")
            .await
            == json!("paused"))
        .then_some(())
    })
    .await;
    let standby_head = hydrate(&base, &token, RUNS).await.watermark;
    for i in 10..20 {
        let (path, body) = frame("replica_a", &format!("f{i}"));
        ok(&http, &base, "1", &path, body).await;
    }
    let written = eventually("the primary to project the 10 frames", || async {
        let rows = owned_rows(&store, RUNS, last.watermark, &alice).await;
        (rows.len() >= 10).then_some(rows)
    })
    .await;
    let ahead_at = written[4].watermark;
    assert!(ahead_at > standby_head, "{ahead_at} > {standby_head}");
    // A client holding a watermark only the primary has: accepted, and it waits.
    let mut ahead = joined(&base, &token).await;
    ahead
        .subscribe_from(&[(RUNS, Some(ahead_at))])
        .await
        .unwrap()
        .expect("a watermark the primary has is not refused");
    let early = updates_within(&mut ahead, Duration::from_millis(800)).await;
    assert!(early.is_empty(), "delivered past the standby: {early:?}");
    let early = updates_within(&mut live, Duration::from_millis(200)).await;
    assert!(early.is_empty(), "delivered past the standby: {early:?}");
    // The node reports how far the standby trails the primary.
    let lag = replica_lag(&base).await;
    assert!(
        lag >= 10.0,
        "replica lag gauge while replay is paused: {lag}"
    );
    // A watermark nobody wrote is still refused.
    let primary_head = store.topic_states(&[RUNS]).await.unwrap()[0].head_watermark;
    let mut bogus = joined(&base, &token).await;
    let refused = bogus
        .subscribe_from(&[(RUNS, Some(primary_head + 1_000))])
        .await
        .unwrap()
        .expect_err("a cursor ahead of the primary is stale");
    assert_eq!(refused.code, ErrorCode::StaleCursor);
    drop(bogus);
    // A next hydration page naming the primary's watermark waits, then says the replica is
    // behind; one naming a watermark nobody wrote is invalid.
    let (status, body) = hydrate_raw(&base, &token, &format!("watermark={ahead_at}&after=a")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "replica_behind", "{body}");
    let (status, body) = hydrate_raw(
        &base,
        &token,
        &format!("watermark={}&after=a", primary_head + 1_000),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");

    // Replay resumes: both sessions receive the rest, the waiting one exactly after its mark.
    clusters
        .standby_sql("SELECT pg_wal_replay_resume()::text")
        .await;
    let got = updates_until(&mut live, "the 10 frames after the pause", |u| {
        u.len() >= 10
    })
    .await;
    seen.extend(got);
    let got_ahead = updates_until(&mut ahead, "the frames after the ahead watermark", |u| {
        u.len() >= 5
    })
    .await;
    assert_delivered_exactly(&got_ahead, &written[5..]);
    let mut seen_ahead = got_ahead;
    let (status, body) = hydrate_raw(&base, &token, &format!("watermark={ahead_at}&after=a")).await;
    assert_eq!(status, 200, "{body}");

    // 3. SIGKILL the standby under a write load, then restart it.
    const FRAMES: usize = 60;
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..FRAMES {
                let (path, body) = frame("replica_a", &format!("k{i}"));
                ok(&http, &base, "1", &path, body).await;
                acked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    while acked.load(Ordering::SeqCst) < FRAMES / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clusters.standby.kill_9();
    let (status, body) = eventually("hydration to report the standby down", || async {
        let (status, body) = hydrate_raw(&base, &token, "").await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "replica_unavailable", "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run_as = clusters.run_as;
    clusters
        .standby
        .start(run_as)
        .await
        .expect("restart the standby");
    writer.await.expect("every write on the primary succeeded");
    ok(
        &http,
        &base,
        "1",
        "/internal/v1/runs/replica_a/finish",
        json!({"thread_id": "thread_1", "status": "succeeded"}),
    )
    .await;
    seen.extend(
        updates_until(&mut live, "the run's receipt after the restart", |u| {
            receipted(u, "replica_a")
        })
        .await,
    );
    seen_ahead.extend(
        updates_until(&mut ahead, "the receipt on the ahead session", |u| {
            receipted(u, "replica_a")
        })
        .await,
    );
    let truth = owned_rows(&store, RUNS, hydrated.watermark, &alice).await;
    assert_eq!(
        truth.len(),
        wanted + 10 + FRAMES + 1 + 1,
        "frames, finish, receipt"
    );
    assert_delivered_exactly(&seen, &truth);
    let after_ahead: Vec<_> = truth
        .iter()
        .filter(|r| r.watermark > ahead_at)
        .cloned()
        .collect();
    assert_delivered_exactly(&seen_ahead, &after_ahead);
    let last = truth.last().unwrap();
    eventually(
        "the restarted standby's hydration to show the receipt",
        || async {
            let (status, body) = hydrate_raw(&base, &token, "").await;
            let h: sync_gateway::http::HydrateResponse = (status == 200)
                .then(|| serde_json::from_value(body).ok())
                .flatten()?;
            (doc(&h) == Some((last.doc_version, last.payload_hash.clone()))).then_some(())
        },
    )
    .await;
    drop(node);
    drop(clusters);
}

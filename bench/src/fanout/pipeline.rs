//! The real-pipeline mode of `bench fanout`: a `serve` child process (the runtime binary, on
//! embedded SQLite or on PostgreSQL) runs engine → journal → projectors → store → Khala; this
//! process commits `text_delta` frames over HTTP at a steady rate (a fresh signature token per
//! command, as a real caller) and holds the client connections. Commit → client latency is
//! measured from the moment the command's HTTP 2xx returned to the moment a client read the
//! update carrying that frame (identified by the run and its `latest_seq`), both on this
//! process's monotonic clock.
//!
//! One file over ~600 lines on purpose: the child, the commit driver and the clients' latency
//! join are one measurement whose parts only make sense together.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::load::{client_config, token, LoadReport};
use super::{FanoutArgs, BENCH_USER, FANOUT_TOPIC};
use sync_gateway::client::socket_url;

/// The signature secret the bench and its `serve` child share.
const SIGNATURE_SECRET: &str = "fanout-bench-signature-secret-0123456789";

/// The audit checkpoint key of the `serve` child (a bench key: nothing it signs is kept).
const BENCH_AUDIT_KEY: &str = "be0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0cbe0c";

/// The `serve` child.
pub(crate) struct Runtime {
    /// Killed on drop (`kill_on_drop`), so a failed bench never leaves it behind.
    child: Child,
    pid: u32,
    pub base: String,
    pub port: u16,
    /// The embedded journal's data directory (removed on drop); unused with PostgreSQL.
    _data_dir: tempfile::TempDir,
}

impl Runtime {
    /// Starts `<runtime-bin> serve` on port 0 and waits for its "listening on" line.
    pub(crate) async fn spawn(args: &FanoutArgs) -> anyhow::Result<Self> {
        Self::spawn_on(
            args.runtime_bin.as_deref(),
            args.database_url.as_deref(),
            args.read_database_url.as_deref(),
        )
        .await
    }

    /// [`Runtime::spawn`] from its parts: the binary, the journal (embedded without a URL) and
    /// the read replica Khala and hydration read (`--read-database-url`), if any.
    pub(crate) async fn spawn_on(
        runtime_bin: Option<&std::path::Path>,
        database_url: Option<&str>,
        read_database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        // This binary's hidden `runtime` subcommand is the runtime's own command line.
        let (bin, prefix): (_, &[&str]) = match runtime_bin {
            Some(path) => (path.to_path_buf(), &[]),
            None => (
                std::env::current_exe().context("locate the current executable")?,
                &["runtime"],
            ),
        };
        let data_dir = tempfile::Builder::new()
            .prefix("oa-bench-fanout-")
            .tempdir()
            .context("create a data directory")?;
        let mut command = Command::new(&bin);
        command
            .args(prefix)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--sync-max-connections", "100000"])
            // Replay budgets must not refuse the catch-up measurement.
            .args([
                "--sync-topic-policies",
                &format!("{FANOUT_TOPIC}=7d:1000000000"),
            ])
            .args(["--shutdown-grace-secs", "5"])
            .env("OA_RUNTIME_SIGNATURE_SECRET", SIGNATURE_SECRET)
            .env("OA_SYNC_JWT_KEY", super::BENCH_SYNC_KEY)
            // PostgreSQL journals need a configured audit key (the embedded one generates it).
            .env("OA_AUDIT_KEY", BENCH_AUDIT_KEY)
            .env_remove("DATABASE_URL")
            .env_remove("READ_DATABASE_URL")
            .env(
                "RUST_LOG",
                std::env::var("OA_BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        if let Some(url) = read_database_url {
            command.args(["--read-database-url", url]);
        }
        let mut child = command.spawn().with_context(|| {
            format!(
                "spawn {} serve (pass --runtime-bin <openagents-runtime>)",
                bin.display()
            )
        })?;
        let pid = child.id().context("serve child pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let base = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("openagents-runtime listening on ") {
                    return Ok(rest.trim().to_owned());
                }
            }
            bail!(
                "{} serve exited before listening (is --runtime-bin the openagents-runtime binary?)",
                bin.display()
            )
        })
        .await
        .context("serve did not start within 2 minutes")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port of the serve child")?;
        Ok(Self {
            child,
            pid,
            base,
            port,
            _data_dir: data_dir,
        })
    }

    /// The child's resident set size in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("read the serve child's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .context("VmRSS of the serve child")
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub(crate) async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Commands over HTTP, as the runtime's callers send them.
pub(crate) struct Driver {
    http: reqwest::Client,
    base: String,
    secret: engine::auth::SigningSecret,
    /// Run ids are `<prefix>r<k>` (fan-out) and `<prefix>s<k>` (replay seed).
    pub prefix: String,
}

impl Driver {
    pub(crate) fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .context("HTTP client")?,
            base: base.to_owned(),
            secret: engine::auth::SigningSecret::new(SIGNATURE_SECRET)
                .map_err(|e| anyhow::anyhow!("bench signature secret: {e}"))?,
            prefix: format!("fanout{}_", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        })
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let claims = engine::auth::InternalClaims {
            user_id: Some(BENCH_USER.to_owned()),
            ..engine::auth::InternalClaims::new(chrono::Utc::now().timestamp(), 300)
        };
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                engine::auth::SIGNATURE_HEADER,
                engine::auth::mint(&self.secret, &claims),
            )
            .header("x-oa-user-id", BENCH_USER)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("POST {path}: {status} {text}");
        }
        Ok(())
    }

    pub(crate) fn run_id(&self, kind: char, k: usize) -> String {
        format!("{}{kind}{k}", self.prefix)
    }

    /// Creates and starts runs `<prefix><kind>0..n`.
    pub(crate) async fn setup_runs(&self, kind: char, n: usize) -> anyhow::Result<()> {
        for k in 0..n {
            let run = self.run_id(kind, k);
            self.post(
                "/internal/v1/runs",
                json!({"run_id": run, "thread_id": "bench_thread"}),
            )
            .await?;
            self.post(
                &format!("/internal/v1/runs/{run}/start"),
                json!({"thread_id": "bench_thread"}),
            )
            .await?;
        }
        Ok(())
    }

    /// Appends one `text_delta` frame to run `<prefix><kind><k>`; returns when it got its 2xx.
    pub(crate) async fn frame(&self, kind: char, k: usize, i: u64) -> anyhow::Result<()> {
        let run = self.run_id(kind, k);
        self.post(
            &format!("/internal/v1/runs/{run}/frames"),
            json!({"thread_id": "bench_thread", "frame_id": format!("f{i}"), "type": "text_delta",
                   "payload": {"delta": "fan-out bench"}}),
        )
        .await
    }

    /// The topic's head watermark (through hydration of a doc nobody has: a cheap read).
    pub(crate) async fn head(&self) -> anyhow::Result<u64> {
        let response: Value = self
            .http
            .get(format!(
                "{}/sync/v1/topics/{FANOUT_TOPIC}/docs?doc_key=none",
                self.base
            ))
            .bearer_auth(token())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        response["watermark"]
            .as_u64()
            .context("hydration watermark")
    }
}

impl Driver {
    /// Waits (up to 10 minutes) until the topic's head reaches `watermark`; returns the head.
    pub(crate) async fn wait_for_head(&self, watermark: u64) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let head = self.head().await?;
            if head >= watermark {
                return Ok(head);
            }
            if Instant::now() > deadline {
                bail!("projection did not reach watermark {watermark} (at {head})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What the commits did.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommitStats {
    pub committed: u64,
    pub seconds: f64,
    /// HTTP latency of the commands (request → 2xx), ms.
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
}

/// Commits `count` frames at `rate`/s over `runs` runs: commit `i` goes to run `i % runs`, each
/// run's commits in order (so frame `j` of run `k` has `latest_seq` `j + 2`). Records each
/// commit's 2xx time (ns since `clock`) in `commit_ns[i]`.
async fn steady(
    driver: Arc<Driver>,
    runs: usize,
    rate: u64,
    count: u64,
    commit_ns: Arc<Vec<AtomicU64>>,
    clock: Instant,
) -> anyhow::Result<CommitStats> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let http = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
    ));
    let mut tasks = JoinSet::new();
    for k in 0..runs {
        let (driver, commit_ns, http) = (driver.clone(), commit_ns.clone(), http.clone());
        tasks.spawn(async move {
            let mut i = k as u64;
            while i < count {
                tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
                let sent = Instant::now();
                driver.frame('r', k, i).await?;
                let done = Instant::now();
                commit_ns[i as usize].store(nanos(clock, done), Ordering::SeqCst);
                let _ = http.lock().expect("histogram lock").record(
                    u64::try_from((done - sent).as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
                i += runs as u64;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("commit task")??;
    }
    let http = http.lock().expect("histogram lock");
    Ok(CommitStats {
        committed: count,
        seconds: start.elapsed().as_secs_f64(),
        http_p50_ms: http.value_at_quantile(0.5) as f64 / 1000.0,
        http_p99_ms: http.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn nanos(clock: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(clock).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Per update in a frame: the fan-out run index and `latest_seq`, found by scanning the text
/// (`"run_id":"<prefix>r<k>"` then `"latest_seq":<n>` within the same payload).
fn scan(text: &str, prefix: &str, mut each: impl FnMut(Option<(usize, u64)>)) {
    let run_tag = format!("\"run_id\":\"{prefix}r");
    let mut rest = text;
    while let Some(pos) = rest.find("\"run_id\":\"") {
        rest = &rest[pos..];
        let ours = rest.starts_with(&run_tag);
        let k = if ours {
            let after = &rest[run_tag.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            after[..digits].parse::<usize>().ok()
        } else {
            None
        };
        rest = &rest[10..];
        let Some(seq_pos) = rest.find("\"latest_seq\":") else {
            each(None);
            return;
        };
        rest = &rest[seq_pos + 13..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let seq = rest[..digits].parse::<u64>().ok();
        each(k.zip(seq));
    }
}

/// What one client saw.
struct Received {
    /// Receive time (ns since the clock) per commit index; 0 = never.
    at: Vec<u64>,
    duplicates: u64,
    /// Updates that are not one of this run's fan-out commits (none expected).
    foreign: u64,
    /// One full update frame, as sent (the baseline's template).
    sample: Option<String>,
}

struct Shared {
    ready: AtomicUsize,
    /// Cancelled after the drain timeout: clients stop waiting.
    stop: tokio_util::sync::CancellationToken,
}

pub(crate) struct Clients {
    shared: Arc<Shared>,
    tasks: JoinSet<Received>,
    count: usize,
    runs: usize,
    expected: u64,
}

async fn open(port: u16, token: &str) -> anyhow::Result<super::load::Ws> {
    let url = socket_url(&format!("ws://127.0.0.1:{port}"), token, &[]);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true).await?;
    ws.send(Message::text(r#"["1","1","sync:v1","phx_join",{}]"#))
        .await?;
    ws.send(Message::text(format!(
        r#"["1","2","sync:v1","sync:subscribe",{{"topics":["{FANOUT_TOPIC}"]}}]"#
    )))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("sync:update_batch") => return Ok(ws),
            Some(Ok(Message::Text(text))) if text.contains("\"error\"") => {
                bail!("subscribe failed: {text}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during subscribe"),
        }
    }
}

/// Opens `n` subscribed connections to the `serve` child; each expects `expected` commits.
pub(crate) async fn connect_all(
    port: u16,
    n: usize,
    prefix: &str,
    runs: usize,
    expected: u64,
    clock: Instant,
) -> anyhow::Result<Clients> {
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        stop: tokio_util::sync::CancellationToken::new(),
    });
    let token = Arc::new(token());
    let handshakes = Arc::new(Semaphore::new(128));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for index in 0..n {
        let (shared, token, handshakes, failures) = (
            shared.clone(),
            token.clone(),
            handshakes.clone(),
            failures.clone(),
        );
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut received = Received {
                at: vec![0; usize::try_from(expected).unwrap_or(0)],
                duplicates: 0,
                foreign: 0,
                sample: None,
            };
            let permit = handshakes.acquire_owned().await;
            let ws = open(port, &token).await;
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    if failures.fetch_add(1, Ordering::SeqCst) == 0 {
                        eprintln!("connection failed: {e:#}");
                    }
                    return received;
                }
            };
            shared.ready.fetch_add(1, Ordering::SeqCst);
            let mut got = 0u64;
            while got < expected {
                let message = tokio::select! {
                    () = shared.stop.cancelled() => break,
                    message = ws.next() => message,
                };
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break,
                };
                let now = nanos(clock, Instant::now());
                let mut any = false;
                scan(text.as_str(), &prefix, |found| {
                    any = true;
                    let Some((k, seq)) = found else {
                        received.foreign += 1;
                        return;
                    };
                    let slot = seq
                        .checked_sub(2)
                        .map(|j| j * runs as u64 + k as u64)
                        .filter(|&i| k < runs && i < expected);
                    match slot {
                        Some(i) if received.at[i as usize] == 0 => {
                            received.at[i as usize] = now;
                            got += 1;
                        }
                        Some(_) => received.duplicates += 1,
                        None => received.foreign += 1,
                    }
                });
                if any && index == 0 && received.sample.is_none() {
                    received.sample = Some(text.as_str().to_owned());
                }
            }
            let _ = ws.close(None).await;
            received
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while shared.ready.load(Ordering::SeqCst) + failures.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} connections became ready",
                shared.ready.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = failures.load(Ordering::SeqCst);
    if failed > 0 {
        bail!("{failed} of {n} connections failed");
    }
    Ok(Clients {
        shared,
        tasks,
        count: n,
        runs,
        expected,
    })
}

/// The fan-out run's measurements.
pub(crate) struct PipelineReport {
    pub load: LoadReport,
    pub commits: CommitStats,
    pub duplicates: u64,
    pub foreign: u64,
    /// Updates a client read before the command's 2xx reached the driver (counted as 0 ms).
    pub before_ack: u64,
    /// A `sync:update_batch` frame carrying one update, as Khala sent it.
    pub sample_update: Option<Value>,
}

/// Commits at `rate` and measures delivery to every client.
pub(crate) async fn measure(
    driver: Arc<Driver>,
    mut clients: Clients,
    rate: u64,
    clock: Instant,
) -> anyhow::Result<PipelineReport> {
    let count = clients.expected;
    let commit_ns: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let first_commit = nanos(clock, Instant::now());
    let commits = steady(driver, clients.runs, rate, count, commit_ns.clone(), clock).await?;
    let stop = clients.shared.stop.clone();
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
    });
    let mut results = Vec::with_capacity(clients.count);
    while let Some(result) = clients.tasks.join_next().await {
        results.push(result.context("client task")?);
    }
    watchdog.abort();
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
    let (mut delivered, mut duplicates, mut foreign, mut before_ack, mut last) = (0, 0, 0, 0, 0);
    let mut sample = None;
    for received in &results {
        duplicates += received.duplicates;
        foreign += received.foreign;
        if sample.is_none() {
            sample.clone_from(&received.sample);
        }
        for (i, &at) in received.at.iter().enumerate() {
            if at == 0 {
                continue;
            }
            delivered += 1;
            last = last.max(at);
            let committed = commit_ns[i].load(Ordering::SeqCst);
            let latency_us = if committed == 0 || at < committed {
                before_ack += 1;
                1
            } else {
                ((at - committed) / 1000).max(1)
            };
            let _ = histogram.record(latency_us);
        }
    }
    let elapsed = last.saturating_sub(first_commit) as f64 / 1e9;
    Ok(PipelineReport {
        load: LoadReport {
            expected: count * clients.count as u64,
            delivered,
            deliveries_per_sec: if elapsed > 0.0 {
                delivered as f64 / elapsed
            } else {
                0.0
            },
            p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: histogram.max() as f64 / 1000.0,
        },
        commits,
        duplicates,
        foreign,
        before_ack,
        sample_update: sample.as_deref().and_then(first_update),
    })
}

/// The first update of a `sync:update_batch` frame's text.
fn first_update(text: &str) -> Option<Value> {
    let frame: Value = serde_json::from_str(text).ok()?;
    frame.get(4)?.get("updates")?.get(0).cloned()
}

/// Frames per seed run: many short runs, like real traffic. (Seeding measured the same rate,
/// ~340 commands/s on SQLite, with 16 runs of 12,500 frames: not run length but, most likely,
/// the embedded journal's per-commit sync and the child's CPU, which sat at ~100 %, bound it.)
const SEED_FRAMES_PER_RUN: u64 = 500;

/// The replay measurement's seeding: about `rows` stream rows through the pipeline as fast as it
/// takes them, over `concurrency` command streams, each creating, starting and filling its own
/// runs of [`SEED_FRAMES_PER_RUN`] frames.
pub(crate) struct Seeded {
    /// The head before the seed runs were created (replay starts here).
    pub from: u64,
    /// The head once everything was projected.
    pub head: u64,
    pub commands: u64,
    /// First command → last 2xx.
    pub seconds: f64,
    /// Last 2xx → projected (the head reached the last row).
    pub projection_lag_seconds: f64,
}

pub(crate) async fn seed(
    driver: Arc<Driver>,
    rows: u64,
    concurrency: usize,
) -> anyhow::Result<Seeded> {
    let from = driver.head().await?;
    let concurrency = concurrency.max(1);
    let runs = usize::try_from(rows.div_ceil(SEED_FRAMES_PER_RUN + 2))
        .unwrap_or(usize::MAX)
        .max(concurrency);
    // Each run is created and started (two rows), then gets its share of frames.
    let frames = rows.saturating_sub(2 * runs as u64);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for stream in 0..concurrency {
        let driver = driver.clone();
        tasks.spawn(async move {
            let mut commands = 0u64;
            for k in (stream..runs).step_by(concurrency) {
                let run = driver.run_id('s', k);
                driver
                    .post(
                        "/internal/v1/runs",
                        json!({"run_id": run, "thread_id": "bench_thread"}),
                    )
                    .await?;
                driver
                    .post(
                        &format!("/internal/v1/runs/{run}/start"),
                        json!({"thread_id": "bench_thread"}),
                    )
                    .await?;
                commands += 2;
                // Frames i with i % runs == k.
                let mut i = k as u64;
                while i < frames {
                    driver.frame('s', k, i).await?;
                    commands += 1;
                    i += runs as u64;
                }
            }
            anyhow::Ok(commands)
        });
    }
    let mut commands = 0;
    while let Some(result) = tasks.join_next().await {
        commands += result.context("seed task")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let acked = Instant::now();
    let head = driver.wait_for_head(from + commands).await?;
    Ok(Seeded {
        from,
        head,
        commands,
        seconds,
        projection_lag_seconds: acked.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_each_updates_run_and_seq() {
        let text = r#"[null,null,"sync:v1","sync:update_batch",{"updates":[
            {"topic":"t","doc_key":"runtime/run_summary:px_r3","doc_version":9,"payload":{"run_id":"px_r3","thread_id":"x","status":"running","latest_seq":7}},
            {"topic":"t","doc_key":"runtime/run_summary:other","doc_version":1,"payload":{"run_id":"other","thread_id":"x","status":"running","latest_seq":2}},
            {"topic":"t","doc_key":"runtime/run_summary:px_r12","doc_version":3,"payload":{"run_id":"px_r12","latest_seq":2}}
        ],"replay_complete":true}]"#;
        let mut found = Vec::new();
        scan(text, "px_", |f| found.push(f));
        assert_eq!(found, [Some((3, 7)), None, Some((12, 2))]);
        let mut none = Vec::new();
        scan(r#"["1",null,"sync:v1","sync:heartbeat",{}]"#, "px_", |f| {
            none.push(f)
        });
        assert!(none.is_empty());
        let update = first_update(text).unwrap();
        assert_eq!(update["payload"]["latest_seq"], 7);
    }
}

//! `openagents-bench replica`: does a hot standby add read capacity without costing the primary
//! writes? Three phases of `--duration` each, every one with a `serve` child over the same
//! primary and the same command driver:
//!
//! 1. writes alone: `--writers` HTTP command streams (`text_delta` frames), reads on nothing —
//!    the primary's write throughput, the raw baseline of this bench;
//! 2. writes while `--readers` clients hydrate the topic page after page
//!    (`GET /sync/v1/topics/…/docs?limit=500`), the node reading the primary;
//! 3. the same with the node reading the standby (`serve --read-database-url`).
//!
//! It prints commands/s, hydrated documents/s and pages/s per phase, and the ratios of phases 2
//! and 3 to phase 1 (writes) and of phase 3 to phase 2 (reads). The standby must stream from
//! `--database-url` (checked: `pg_is_in_recovery()`); docs/BENCHMARKS.md shows how to set one
//! up on one machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::load::token;
use super::pipeline::{Driver, Runtime};
use super::FANOUT_TOPIC;
use sync_gateway::config::parse_duration;

/// Read capacity with and without a hot standby, beside the primary's write throughput.
#[derive(Clone, Debug, clap::Args)]
pub struct ReplicaArgs {
    /// The primary (PostgreSQL).
    #[arg(long)]
    pub database_url: String,
    /// A hot standby streaming from the primary.
    #[arg(long)]
    pub read_database_url: String,
    /// Concurrent command streams.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Concurrent hydrating clients.
    #[arg(long, default_value_t = 32)]
    pub readers: usize,
    /// Runs (documents) created before the phases; every hydration pass reads all of them.
    #[arg(long, default_value_t = 1000)]
    pub docs: usize,
    /// How long each phase runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// An `openagents-runtime` binary to run `serve` with (default: this binary's `runtime`).
    #[arg(long)]
    pub runtime_bin: Option<std::path::PathBuf>,
}

/// Frame ids, unique across phases (a run's frames are told apart by id).
static FRAME_IDS: AtomicU64 = AtomicU64::new(0);

/// One phase's counts.
#[derive(Clone, Copy, Debug, Default)]
struct Phase {
    commands: u64,
    pages: u64,
    docs: u64,
    seconds: f64,
}

impl Phase {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.seconds.max(1e-9)
    }
}

/// Runs the bench.
///
/// # Errors
/// A child that does not start, a command that fails, a read URL that is not a standby.
pub async fn run_replica(args: ReplicaArgs) -> anyhow::Result<()> {
    if args.writers == 0 || args.docs < args.writers {
        bail!("--docs must be at least --writers (each writer appends to its own runs)");
    }
    check_standby(&args.read_database_url).await?;
    let bin = args.runtime_bin.as_deref();
    let node = Runtime::spawn_on(bin, Some(&args.database_url), None).await?;
    let driver = Arc::new(Driver::new(&node.base)?);
    let prefix = driver.prefix.clone();
    println!(
        "replica bench: {} writers, {} readers, {} documents, {:?} per phase",
        args.writers, args.readers, args.docs, args.duration
    );
    let seeded = Instant::now();
    seed_runs(&driver, args.docs, args.writers.max(1)).await?;
    println!(
        "seeded {} runs in {:.1}s",
        args.docs,
        seeded.elapsed().as_secs_f64()
    );
    let alone = phase(&driver, &args, 0).await?;
    report("writes alone (primary)", &alone);
    let primary = phase(&driver, &args, args.readers).await?;
    report("writes + reads on the primary", &primary);
    node.stop().await;

    let node =
        Runtime::spawn_on(bin, Some(&args.database_url), Some(&args.read_database_url)).await?;
    let mut driver = Driver::new(&node.base)?;
    driver.prefix = prefix;
    let driver = Arc::new(driver);
    let standby = phase(&driver, &args, args.readers).await?;
    report("writes + reads on the standby", &standby);
    node.stop().await;

    let writes = |p: &Phase| p.per_sec(p.commands) / alone.per_sec(alone.commands).max(1e-9);
    println!(
        "writes vs alone: reads on the primary {:.2}, reads on the standby {:.2}",
        writes(&primary),
        writes(&standby)
    );
    println!(
        "reads, standby vs primary: docs/s {:.2}, pages/s {:.2}",
        standby.per_sec(standby.docs) / primary.per_sec(primary.docs).max(1e-9),
        standby.per_sec(standby.pages) / primary.per_sec(primary.pages).max(1e-9)
    );
    Ok(())
}

fn report(name: &str, p: &Phase) {
    println!(
        "{name}: {:.0} cmds/s, {:.0} docs/s hydrated ({:.1} pages/s) over {:.1}s",
        p.per_sec(p.commands),
        p.per_sec(p.docs),
        p.per_sec(p.pages),
        p.seconds
    );
}

/// Refuses a read URL that is not a hot standby (the bench would measure the primary twice).
async fn check_standby(url: &str) -> anyhow::Result<()> {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(url)
        .await
        .context("connect to --read-database-url")?;
    let (recovering,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await?;
    if !recovering {
        bail!("--read-database-url is not a hot standby (pg_is_in_recovery() is false)");
    }
    Ok(())
}

/// Creates and starts runs `<prefix>r0..n` over `streams` concurrent command streams.
async fn seed_runs(driver: &Arc<Driver>, n: usize, streams: usize) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for stream in 0..streams {
        let driver = driver.clone();
        tasks.spawn(async move {
            for k in (stream..n).step_by(streams) {
                let run = driver.run_id('r', k);
                driver
                    .post(
                        "/internal/v1/runs",
                        serde_json::json!({"run_id": run, "thread_id": "bench_thread"}),
                    )
                    .await?;
                driver
                    .post(
                        &format!("/internal/v1/runs/{run}/start"),
                        serde_json::json!({"thread_id": "bench_thread"}),
                    )
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("seed task")??;
    }
    Ok(())
}

/// One phase: `args.writers` command streams and `readers` hydrating clients for
/// `args.duration`.
async fn phase(driver: &Arc<Driver>, args: &ReplicaArgs, readers: usize) -> anyhow::Result<Phase> {
    let stop = CancellationToken::new();
    let commands = Arc::new(AtomicU64::new(0));
    let pages = Arc::new(AtomicU64::new(0));
    let docs = Arc::new(AtomicU64::new(0));
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let started = Instant::now();
    for w in 0..args.writers {
        let (driver, stop, commands) = (driver.clone(), stop.clone(), commands.clone());
        // Writer w cycles over runs w, w + writers, …: no two streams append to one run.
        let stride = args.writers;
        let own = (args.docs / stride).max(1);
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let k = w + (i as usize % own) * stride;
                let id = FRAME_IDS.fetch_add(1, Ordering::Relaxed);
                driver.frame('r', k, id).await?;
                commands.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        });
    }
    let token = token();
    for _ in 0..readers {
        let (driver, stop, pages, docs, token) = (
            driver.clone(),
            stop.clone(),
            pages.clone(),
            docs.clone(),
            token.clone(),
        );
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                let mut after: Option<(String, u64)> = None;
                loop {
                    let mut url = format!(
                        "{}/sync/v1/topics/{FANOUT_TOPIC}/docs?limit=500",
                        driver.base()
                    );
                    if let Some((key, watermark)) = &after {
                        url.push_str(&format!("&after={key}&watermark={watermark}"));
                    }
                    let page: Value = driver
                        .http()
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    pages.fetch_add(1, Ordering::Relaxed);
                    let n = page["docs"].as_array().map_or(0, Vec::len) as u64;
                    docs.fetch_add(n, Ordering::Relaxed);
                    match page["next_after"].as_str() {
                        Some(next) if !stop.is_cancelled() => {
                            let watermark = after
                                .as_ref()
                                .map_or_else(|| page["watermark"].as_u64().unwrap_or(0), |a| a.1);
                            after = Some((next.to_owned(), watermark));
                        }
                        _ => break,
                    }
                }
            }
            Ok(())
        });
    }
    tokio::time::sleep(args.duration).await;
    let seconds = started.elapsed().as_secs_f64();
    let counted = Phase {
        commands: commands.load(Ordering::Relaxed),
        pages: pages.load(Ordering::Relaxed),
        docs: docs.load(Ordering::Relaxed),
        seconds,
    };
    stop.cancel();
    while let Some(result) = tasks.join_next().await {
        result.context("bench task")??;
    }
    Ok(counted)
}

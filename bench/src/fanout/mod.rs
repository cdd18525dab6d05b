//! `openagents-bench fanout`: N WebSocket clients subscribed to one topic while commands
//! commit at a steady rate; reports deliveries/s, commit → client latency p50/p99 and server
//! memory per idle connection, beside a raw baseline measured in the same run (a bare
//! tokio-tungstenite broadcast of the same frames), plus the replay catch-up rate to one client.
//!
//! Two sources (`--source`):
//! - `pipeline` (default): the real runtime. A `serve` child (this binary's `runtime serve`, or `--runtime-bin`;
//!   embedded SQLite, or PostgreSQL with `--database-url`) runs engine → journal → projectors →
//!   store → Khala; this process commits `text_delta` frames over HTTP and measures from each
//!   command's 2xx. The baseline broadcasts the very updates Khala sent (captured in the run).
//! - `memory`: the gateway alone over the in-memory source in a child process, rows appended
//!   in-process (the gateway's own ceiling, no journal or projector).
//!
//! Clients run in this process and share the machine's cores with the servers, as a real load
//! generator on the same host would. Every run gets fresh server processes, so RSS growth per
//! idle connection is the connections' alone.
//!
//! - [`pipeline`]: the `serve` child, the HTTP commit driver, its clients and measurements.
//! - [`server`]: the helper child: baseline broadcaster, in-memory gateway, RSS probe.
//! - [`load`]: the baseline's and the in-memory mode's clients, and the replay client.
//! - [`report`]: the printed lines and the `--plot` SVG.
//! - [`stages`]: the `serve` child's stage histograms over a run (where the milliseconds go).
//! - [`replica`]: `bench replica`, read capacity with and without a hot standby beside the
//!   primary's write throughput (the same `serve` child and command driver).

mod load;
mod pipeline;
pub mod replica;
mod report;
mod server;
mod stages;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use anyhow::{bail, Context as _};

pub use load::LoadReport;
use report::{humantime, print_replay, print_result, write_plot, RunResult};
use sync_gateway::config::parse_duration;

/// Set in the child's environment.
pub const ROLE_ENV: &str = "OA_BENCH_FANOUT_ROLE";

/// Where the fan-out's rows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The real runtime: commands over HTTP into a `serve` child.
    Pipeline,
    /// The gateway alone over the in-memory source.
    Memory,
}

/// Fan-out benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct FanoutArgs {
    /// `pipeline`: commands through the real runtime (a `serve` child); `memory`: the gateway
    /// alone over the in-memory source.
    #[arg(long, value_enum, default_value = "pipeline")]
    pub source: Source,
    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub connections: Vec<usize>,
    /// Commits per second during each run (one row each), per connection count; a single value
    /// applies to all.
    #[arg(long, value_delimiter = ',', default_value = "100,40")]
    pub rate: Vec<u64>,
    /// How long rows commit in each run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// (memory) Size of each row's padding in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Rows replayed to one client for the catch-up measurement (0 to skip).
    #[arg(long, default_value_t = 200_000)]
    pub replay_rows: u64,
    /// `replay_batch_size` the replaying client asks for.
    #[arg(long, default_value_t = 1000)]
    pub replay_batch_size: u64,
    /// Skip the raw baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Write deliveries/s, p99 and memory per idle connection over the connection counts as an
    /// SVG growth plot, e.g. `docs/growth-fanout.svg`.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// (pipeline) Run the `serve` child on this PostgreSQL database instead of an embedded
    /// SQLite journal in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// (pipeline, with --database-url) A hot standby of that database for Khala's stream
    /// reads and hydration (`serve --read-database-url`).
    #[arg(long)]
    pub read_database_url: Option<String>,
    /// (pipeline) An `openagents-runtime` binary to run `serve` with (default: this binary's
    /// `runtime serve`, the same library).
    #[arg(long)]
    pub runtime_bin: Option<std::path::PathBuf>,
    /// (pipeline) Runs the steady commits are spread over (each run's commits in order).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// (pipeline) Concurrent command streams seeding the replay measurement.
    #[arg(long, default_value_t = 16)]
    pub seed_concurrency: usize,
    /// (pipeline) Measured rounds per connection count, each a fresh `serve` child and its own
    /// raw baseline. On a shared machine one round's p99 ratio moves with the load; with more
    /// than one, every round is printed, then the median round (by p99 ratio), which is also
    /// the one plotted.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// The server child and its line protocol (one command line in, one reply line out).
pub(crate) struct ServerProcess {
    /// Killed on drop (`kill_on_drop`), so a failed bench never leaves it behind.
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    pub khala_port: u16,
    pub baseline_port: u16,
}

impl ServerProcess {
    async fn spawn() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locate the current executable")?;
        let mut child = Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(ROLE_ENV, "server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn the bench server process")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let mut server = Self {
            child,
            stdin,
            stdout,
            khala_port: 0,
            baseline_port: 0,
        };
        let ready = server.read_line().await?;
        let parts: Vec<&str> = ready.split_whitespace().collect();
        match parts.as_slice() {
            ["ready", khala, baseline] => {
                server.khala_port = khala.parse()?;
                server.baseline_port = baseline.parse()?;
            }
            _ => bail!("unexpected bench server greeting {ready:?}"),
        }
        Ok(server)
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        match self.stdout.next_line().await? {
            Some(line) => Ok(line.trim().to_owned()),
            None => bail!("the bench server process exited"),
        }
    }

    /// Sends a command and returns the reply's words.
    pub(crate) async fn call(&mut self, command: &str) -> anyhow::Result<Vec<String>> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(self
            .read_line()
            .await?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    async fn rss(&mut self) -> anyhow::Result<u64> {
        let reply = self.call("rss").await?;
        reply
            .get(1)
            .context("rss reply")?
            .parse()
            .context("rss value")
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// When the server process cannot start or a run fails.
pub async fn run_fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        return server::run(args).await;
    }
    raise_fd_limit();
    match args.source {
        Source::Pipeline => run_pipeline(args).await,
        Source::Memory => run_memory(args).await,
    }
}

fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{} cores, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.join(" ")
    )
}

/// One measured round of the real pipeline at `connections` sockets: a fresh `serve` child, the
/// clients, `count` commits at `rate`/s, the stage table, then (unless `--no-baseline`) the raw
/// broadcast at the same rate to as many sockets. Prints its figures as it goes.
async fn pipeline_round(
    args: &FanoutArgs,
    connections: usize,
    rate: u64,
    count: u64,
    runs: usize,
    template: &mut Option<serde_json::Value>,
) -> anyhow::Result<RunResult> {
    let runtime = pipeline::Runtime::spawn(args).await?;
    let driver = std::sync::Arc::new(pipeline::Driver::new(&runtime.base)?);
    let before = driver.head().await?;
    driver.setup_runs('r', runs).await?;
    // The runs' created/started rows must be projected before the clients subscribe from
    // the head, or they would arrive as unexpected updates.
    driver.wait_for_head(before + 2 * runs as u64).await?;
    let clock = std::time::Instant::now();
    let rss_before = runtime.rss()?;
    let clients = pipeline::connect_all(
        runtime.port,
        connections,
        &driver.prefix,
        runs,
        count,
        clock,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = runtime.rss()?;
    let idle = (rss_after.saturating_sub(rss_before)) as f64 / connections as f64;
    let metrics_http = reqwest::Client::new();
    let stages_before = stages::Scrape::fetch(&metrics_http, &runtime.base).await?;
    let report = pipeline::measure(driver, clients, rate, clock).await?;
    let stages_after = stages::Scrape::fetch(&metrics_http, &runtime.base).await?;
    runtime.stop().await;
    if report.sample_update.is_some() {
        template.clone_from(&report.sample_update);
    }
    let baseline = match (&template, args.no_baseline) {
        (Some(update), false) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut server = ServerProcess::spawn().await?;
            let reply = server.call(&format!("template {update}")).await?;
            if reply.first().map(String::as_str) != Some("template") {
                bail!("baseline template failed: {reply:?}");
            }
            let clients =
                load::connect_all(load::Target::Baseline, server.baseline_port, connections)
                    .await?;
            let report = load::measure(&mut server, clients, "baseline", rate, count).await?;
            server.quit().await;
            Some(report)
        }
        _ => None,
    };
    let result = RunResult {
        connections,
        rate,
        khala: report.load.clone(),
        baseline,
        idle_bytes_per_connection: idle,
    };
    print_result(&result);
    stages::print(
        &stages_before,
        &stages_after,
        &result.khala,
        result.baseline.as_ref(),
    );
    println!(
        "          pipeline | {} commits in {:.1} s ({:.0}/s offered {rate}/s), command 2xx p50 {:.1} ms p99 {:.1} ms; \
         duplicates {}, foreign {}, read before the 2xx returned {}; payload {} B",
        report.commits.committed,
        report.commits.seconds,
        report.commits.committed as f64 / report.commits.seconds.max(1e-9),
        report.commits.http_p50_ms,
        report.commits.http_p99_ms,
        report.duplicates,
        report.foreign,
        report.before_ack,
        report
            .sample_update
            .as_ref()
            .map_or(0, |u| u["payload"].to_string().len()),
    );
    Ok(result)
}

/// The round whose p99 ratio (Khala / raw; Khala's p99 without a baseline) is the median of
/// `rounds` (the lower middle one of an even count), after printing every round's ratio. A
/// measured round, not an average of rounds.
fn median_round(mut rounds: Vec<RunResult>) -> RunResult {
    let key = |r: &RunResult| r.p99_ratio().unwrap_or(r.khala.p99_ms);
    let each: Vec<String> = rounds.iter().map(|r| format!("{:.2}", key(r))).collect();
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let median = rounds.swap_remove((rounds.len() - 1) / 2);
    if each.len() > 1 {
        println!(
            "N={:>5} {} rounds | p99 {} per round: {} | median {:.2} (khala p99 {:.1} ms)",
            median.connections,
            each.len(),
            if median.baseline.is_some() {
                "khala/raw"
            } else {
                "khala ms"
            },
            each.join(", "),
            key(&median),
            median.khala.p99_ms,
        );
    }
    median
}

/// The real pipeline (see the module docs).
async fn run_pipeline(args: FanoutArgs) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    println!(
        "fanout bench, source: REAL PIPELINE (serve child on {}; commits = HTTP text_delta \
         frames over {runs} runs, latency from each command's 2xx); {} of commits per run; \
         a fresh serve process per run; {}",
        if args.database_url.is_some() {
            "PostgreSQL"
        } else {
            "embedded SQLite"
        },
        humantime(args.duration),
        machine()
    );
    let mut template: Option<serde_json::Value> = None;
    let mut results = Vec::new();
    let rounds = args.rounds.max(1);
    for (i, &connections) in args.connections.iter().enumerate() {
        let rate = *args.rate.get(i).or(args.rate.last()).unwrap_or(&100);
        // Whole rounds over the runs, so every run gets the same number of frames.
        let count = ((rate as f64 * args.duration.as_secs_f64()).round() as u64)
            .div_ceil(runs as u64)
            * runs as u64;
        let mut measured = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            measured
                .push(pipeline_round(&args, connections, rate, count, runs, &mut template).await?);
        }
        results.push(median_round(measured));
    }
    write_plot(&args, "real pipeline", &results)?;
    if args.replay_rows > 0 {
        let runtime = pipeline::Runtime::spawn(&args).await?;
        let driver = std::sync::Arc::new(pipeline::Driver::new(&runtime.base)?);
        let seeded = pipeline::seed(driver, args.replay_rows, args.seed_concurrency).await?;
        println!(
            "replay seed through the pipeline: {} commands in {:.1} s ({:.0}/s over HTTP, {} streams), \
             projected {:.2} s after the last 2xx",
            seeded.commands,
            seeded.seconds,
            seeded.commands as f64 / seeded.seconds.max(1e-9),
            args.seed_concurrency,
            seeded.projection_lag_seconds
        );
        let rows = seeded.head - seeded.from;
        let (khala, sample) = load::replay(
            load::Target::Khala,
            runtime.port,
            FANOUT_TOPIC,
            seeded.from,
            rows,
            args.replay_batch_size,
        )
        .await?;
        runtime.stop().await;
        let template = template.or(sample);
        let baseline = match (&template, args.no_baseline) {
            (Some(update), false) => {
                let mut server = ServerProcess::spawn().await?;
                let reply = server.call(&format!("template {update}")).await?;
                if reply.first().map(String::as_str) != Some("template") {
                    bail!("baseline template failed: {reply:?}");
                }
                let reply = server.call(&format!("seed-baseline {rows}")).await?;
                if reply.first().map(String::as_str) != Some("seeded") {
                    bail!("baseline seed failed: {reply:?}");
                }
                let (report, _) = load::replay(
                    load::Target::Baseline,
                    server.baseline_port,
                    FANOUT_TOPIC,
                    0,
                    rows,
                    args.replay_batch_size,
                )
                .await?;
                server.quit().await;
                Some(report)
            }
            _ => None,
        };
        print_replay(rows, args.replay_batch_size, &khala, baseline.as_ref());
    }
    Ok(())
}

/// The gateway alone over the in-memory source (see the module docs).
async fn run_memory(args: FanoutArgs) -> anyhow::Result<()> {
    println!(
        "fanout bench, source: IN-MEMORY (gateway only, rows appended in-process; no journal or \
         projector); payload {} B, {} of commits per run, a fresh server process per run; {}",
        args.payload_bytes,
        humantime(args.duration),
        machine()
    );
    let mut results = Vec::new();
    for (i, &connections) in args.connections.iter().enumerate() {
        let rate = *args.rate.get(i).or(args.rate.last()).unwrap_or(&100);
        let count = (rate as f64 * args.duration.as_secs_f64()).round() as u64;
        // A fresh server per run: its RSS growth is the idle connections' alone.
        let mut server = ServerProcess::spawn().await?;
        let rss_before = server.rss().await?;
        let clients =
            load::connect_all(load::Target::Khala, server.khala_port, connections).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_after = server.rss().await?;
        let idle = (rss_after.saturating_sub(rss_before)) as f64 / connections as f64;
        let khala = load::measure(&mut server, clients, "khala", rate, count).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let baseline = if args.no_baseline {
            None
        } else {
            let clients =
                load::connect_all(load::Target::Baseline, server.baseline_port, connections)
                    .await?;
            let report = load::measure(&mut server, clients, "baseline", rate, count).await?;
            Some(report)
        };
        server.quit().await;
        let result = RunResult {
            connections,
            rate,
            khala,
            baseline,
            idle_bytes_per_connection: idle,
        };
        print_result(&result);
        results.push(result);
    }
    write_plot(&args, "in-memory gateway", &results)?;
    if args.replay_rows > 0 {
        let mut server = ServerProcess::spawn().await?;
        let reply = server
            .call(&format!("seed {} {}", args.replay_rows, args.payload_bytes))
            .await?;
        if reply.first().map(String::as_str) != Some("seeded") {
            bail!("seed failed: {reply:?}");
        }
        let (khala, _) = load::replay(
            load::Target::Khala,
            server.khala_port,
            REPLAY_TOPIC,
            0,
            args.replay_rows,
            args.replay_batch_size,
        )
        .await?;
        let baseline = if args.no_baseline {
            None
        } else {
            Some(
                load::replay(
                    load::Target::Baseline,
                    server.baseline_port,
                    REPLAY_TOPIC,
                    0,
                    args.replay_rows,
                    args.replay_batch_size,
                )
                .await?
                .0,
            )
        };
        print_replay(
            args.replay_rows,
            args.replay_batch_size,
            &khala,
            baseline.as_ref(),
        );
        server.quit().await;
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit (thousands of sockets per process).
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 12_000 => {
            eprintln!("warning: open-files limit is {limit}; 5,000 connections need about 10,500 (raise `ulimit -Hn`)");
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }
}

/// The topic the fan-out runs commit to.
pub(crate) const FANOUT_TOPIC: &str = "runtime.run_summaries";
/// The topic seeded for the replay measurement.
pub(crate) const REPLAY_TOPIC: &str = "runtime.codex_worker_events";
/// The principal every bench client speaks for (every row is theirs).
pub(crate) const BENCH_USER: &str = "bench";

/// The bench's sync-token key as `kid=secret` (every process derives the same one; the `serve`
/// child gets it as `OA_SYNC_JWT_KEY`).
pub(crate) const BENCH_SYNC_KEY: &str = "bench=fanout-bench-secret-0123456789";

/// The bench's token key.
pub(crate) fn bench_auth() -> sync_gateway::auth::AuthConfig {
    let (kid, secret) = BENCH_SYNC_KEY.split_once('=').expect("kid=secret");
    sync_gateway::auth::AuthConfig::new(
        sync_gateway::auth::KeySet::new()
            .with_active_hs256(kid, secret)
            .expect("bench key is valid"),
    )
}

/// Unix nanoseconds (comparable across the two processes on one machine).
pub(crate) fn now_ns() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    )
    .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(khala_p99: f64, raw_p99: Option<f64>) -> RunResult {
        let load = |p99_ms| LoadReport {
            p99_ms,
            ..LoadReport::default()
        };
        RunResult {
            connections: 1000,
            rate: 100,
            khala: load(khala_p99),
            baseline: raw_p99.map(load),
            idle_bytes_per_connection: 0.0,
        }
    }

    #[test]
    fn the_median_round_is_the_measured_round_with_the_middle_p99_ratio() {
        // Ratios 3.0, 1.5, 2.0: the median is the third round (2.0), not Khala's middle p99.
        let median = median_round(vec![
            round(30.0, Some(10.0)),
            round(60.0, Some(40.0)),
            round(40.0, Some(20.0)),
        ]);
        assert_eq!(median.khala.p99_ms, 40.0);
        // Even counts take the lower middle; without a baseline, Khala's p99 decides.
        let median = median_round(vec![
            round(50.0, None),
            round(20.0, None),
            round(40.0, None),
            round(30.0, None),
        ]);
        assert_eq!(median.khala.p99_ms, 30.0);
        assert_eq!(median_round(vec![round(7.0, None)]).khala.p99_ms, 7.0);
    }
}

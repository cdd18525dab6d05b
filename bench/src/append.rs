//! `bench append`: commands per second and p50/p99 latency of one-event commands through the real
//! [`Engine`] (load from cache, decide, one durable append statement), beside plain single-row
//! INSERTs of the same payload size over the same pool, measured in the same run against a fresh
//! scratch database that is created and dropped.

use crate::plot::{self, Panel, Series};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::ids::{FrameId, Owner, RunId, ThreadId, UserId};
use aggregates::run::{Run, RunCommand, RunEvent};
use clap::Args;
use engine::clock::Stamps;
use engine::notify::JournalNotifier;
use engine::{CommandContext, Database, DatabaseConfig, Engine, EngineConfig};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use sqlx::Executor;

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// PostgreSQL server to benchmark; a scratch database is created on it and dropped after.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Concurrent clients to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub clients: Vec<usize>,

    /// Measured seconds per phase (each client count runs a raw and an engine phase).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,

    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,

    /// Size of the frame text in each command's payload, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,

    /// Raw/engine pairs per client count. On a shared machine one pair's ratio moves with the
    /// load; with more than one, every pair is printed and then the median ratio.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,

    /// Keep the scratch database instead of dropping it.
    #[arg(long)]
    pub keep_database: bool,
    /// Write the measurements as an SVG growth plot (throughput, p99 and the ratio over the
    /// client counts), e.g. `docs/growth-append.svg`.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

/// One phase's figures.
#[derive(Debug)]
pub struct PhaseResult {
    pub commands: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs the benchmark and prints a table.
///
/// # Errors
/// When PostgreSQL cannot be reached or the scratch database cannot be created.
pub async fn run(args: AppendArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|c| *c > 0),
        "--clients needs positive counts"
    );
    let args = &args;
    crate::scratch::with_scratch_database(
        &args.database_url,
        args.keep_database,
        |name| async move { measure(args, &name).await },
    )
    .await
}

async fn measure(args: &AppendArgs, name: &str) -> anyhow::Result<()> {
    let max_clients = *args.clients.iter().max().expect("checked non-empty");
    // One connection per client, up to what the server allows (less a few for others): beyond
    // that, clients queue for a connection, as an application's bounded pool makes them.
    let server_limit: i64 = {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&args.database_url).await?;
        let limit: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&mut admin)
            .await?;
        limit.parse().unwrap_or(100)
    };
    let pool_size = u32::try_from(max_clients)
        .unwrap_or(u32::MAX)
        .min(u32::try_from(server_limit - 10).unwrap_or(2))
        .max(2);
    let database = Database::connect(&DatabaseConfig::Postgres {
        url: crate::scratch::with_database(&args.database_url, name),
        max_connections: pool_size,
    })
    .await?;
    database.migrate().await?;
    let Database::Postgres(pool) = &database else {
        unreachable!("connected to PostgreSQL")
    };
    sqlx::query(
        "CREATE TABLE bench_raw (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            aggregate_id text NOT NULL,
            sequence bigint NOT NULL,
            payload json NOT NULL,
            metadata json NOT NULL)",
    )
    .execute(pool)
    .await?;
    let text = "x".repeat(args.payload_bytes);
    let (payload, metadata) = sample_row(&text);
    let settings: Vec<String> = pool
        .fetch_all("SELECT name || '=' || setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'server_version')")
        .await?
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 0))
        .collect();
    println!(
        "bench append: payload {} bytes of frame text ({} bytes stored per event), {}s per phase after {}s warm-up, pool {} connections; {}",
        args.payload_bytes,
        payload.len(),
        args.duration_secs,
        args.warmup_secs,
        pool_size,
        settings.join(", ")
    );
    println!(
        "{:>7}  {:<6}  {:>9}  {:>10}  {:>8}  {:>8}  {:>13}",
        "clients", "path", "commands", "cmds/s", "p50 ms", "p99 ms", "engine/raw"
    );
    let engine = Arc::new(Engine::new(
        database.journal(),
        Stamps::system(),
        Arc::new(JournalNotifier::new()),
        EngineConfig::default(),
    ));
    let duration = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let mut measured = Vec::new();
    let mut round = 0;
    for &clients in &args.clients {
        let mut pairs = Vec::new();
        for _ in 0..args.rounds.max(1) {
            let (raw, with_engine) = measure_pair(
                &engine, pool, round, clients, warmup, duration, &payload, &metadata, &text,
            )
            .await?;
            round += 1;
            print_row(clients, "raw", &raw, None);
            let ratio = with_engine.per_second / raw.per_second;
            print_row(clients, "engine", &with_engine, Some(ratio));
            pairs.push((ratio, raw, with_engine));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (median, raw, with_engine) = pairs.swap_remove(pairs.len() / 2);
        if args.rounds > 1 {
            println!(
                "{clients:>7}  median engine/raw of {} rounds: {median:.2} (raw {:.0}, engine {:.0} cmds/s)",
                args.rounds, raw.per_second, with_engine.per_second
            );
        }
        measured.push((clients as f64, raw, with_engine));
    }
    database.close().await;
    if let Some(path) = &args.plot {
        let series = |name: &str, f: &dyn Fn(&PhaseResult, &PhaseResult) -> f64| Series {
            name: name.into(),
            points: measured.iter().map(|(c, r, e)| (*c, f(r, e))).collect(),
        };
        let panel = |title: &str, y: &str, series: Vec<Series>| Panel {
            title: title.into(),
            x_label: "clients".into(),
            y_label: y.into(),
            log_x: true,
            series,
        };
        let svg = plot::render(
            "bench append: engine vs raw INSERT (PostgreSQL)",
            &format!(
                "openagents-bench append --clients {} --duration-secs {} (pool {pool_size})",
                args.clients
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                args.duration_secs
            ),
            &[
                panel(
                    "throughput",
                    "commands/s",
                    vec![
                        series("raw INSERT", &|r, _| r.per_second),
                        series("engine", &|_, e| e.per_second),
                    ],
                ),
                panel(
                    "p99 latency",
                    "ms",
                    vec![
                        series("raw INSERT", &|r, _| r.p99_ms),
                        series("engine", &|_, e| e.p99_ms),
                    ],
                ),
                panel(
                    "engine / raw",
                    "ratio",
                    vec![series("engine / raw", &|r, e| e.per_second / r.per_second)],
                ),
            ],
        );
        plot::write(path, &svg)?;
    }
    Ok(())
}

/// One raw phase, then one engine phase on runs created for `round`.
#[allow(clippy::too_many_arguments)]
async fn measure_pair(
    engine: &Arc<Engine>,
    pool: &sqlx::PgPool,
    round: usize,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    payload: &Arc<String>,
    metadata: &Arc<String>,
    text: &str,
) -> anyhow::Result<(PhaseResult, PhaseResult)> {
    let raw = phase(clients, warmup, duration, {
        let pool = pool.clone();
        let payload = payload.clone();
        let metadata = metadata.clone();
        move |client, n| {
            let pool = pool.clone();
            let payload = payload.clone();
            let metadata = metadata.clone();
            async move {
                sqlx::query(
                    "INSERT INTO bench_raw (aggregate_id, sequence, payload, metadata)
                     VALUES ($1, $2, $3::json, $4::json)",
                )
                .bind(format!("raw-{round}-{client}"))
                .bind(n as i64)
                .bind(payload.as_str())
                .bind(metadata.as_str())
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
            }
        }
    })
    .await?;
    for client in 0..clients {
        create_run(engine, &run_id(round, client)).await?;
    }
    let with_engine = engine_phase(
        engine,
        round,
        clients,
        warmup,
        duration,
        Arc::new(text.to_owned()),
    )
    .await?;
    Ok((raw, with_engine))
}

/// The engine phase: `clients` loops appending a `text_delta` frame of `text` to their own run
/// (`run_id(round, client)`, created beforehand with [`create_run`]) through `engine`.
pub(crate) async fn engine_phase(
    engine: &Arc<Engine>,
    round: usize,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    text: Arc<String>,
) -> anyhow::Result<PhaseResult> {
    phase(clients, warmup, duration, {
        let engine = engine.clone();
        move |client, n| {
            let engine = engine.clone();
            let text = text.clone();
            async move {
                let mut payload = Map::new();
                payload.insert("delta".into(), Value::String(text.as_str().to_owned()));
                let action = RunCommand::AppendFrame {
                    frame_id: FrameId::parse(format!("f{n}")).expect("valid frame id"),
                    frame_type: "text_delta".into(),
                    payload,
                    occurred_at: None,
                    expected_seq: None,
                };
                let context = CommandContext {
                    actor: "user:bench".into(),
                    ..CommandContext::default()
                };
                engine
                    .execute::<Run>(&run_id(round, client), action, &context)
                    .await
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("engine command failed: {e}"))
            }
        }
    })
    .await
}

pub(crate) fn run_id(round: usize, client: usize) -> String {
    format!("bench-{round}-{client}")
}

pub(crate) async fn create_run(engine: &Engine, id: &str) -> anyhow::Result<()> {
    let action = RunCommand::CreateRun {
        run_id: RunId::parse(id)?,
        thread_id: ThreadId::parse("bench")?,
        owner: Owner::User(UserId::parse("bench")?),
        org_id: None,
        metadata: Map::new(),
    };
    engine
        .execute::<Run>(id, action, &CommandContext::system("bench"))
        .await
        .map_err(|e| anyhow::anyhow!("create run: {e}"))?;
    engine
        .execute::<Run>(
            id,
            RunCommand::StartRun {
                source: "bench".into(),
            },
            &CommandContext::system("bench"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("start run: {e}"))?;
    Ok(())
}

/// The stored payload and metadata JSON an engine command writes, for the raw baseline to
/// insert the same number of bytes.
fn sample_row(text: &str) -> (Arc<String>, Arc<String>) {
    let mut payload = Map::new();
    payload.insert("delta".into(), Value::String(text.to_owned()));
    let at = "2026-02-01T00:00:00.123456Z".parse().expect("timestamp");
    let event = RunEvent::FrameAppended {
        frame_id: FrameId::parse("f1000000").expect("valid"),
        frame_type: "text_delta".into(),
        payload_hash: aggregates::run::frame_payload_hash("text_delta", &payload),
        payload,
        occurred_at: None,
        appended_at: at,
    };
    let payload = serde_json::to_string(&event).expect("event serialises");
    let metadata = json!({"actor": "user:bench", "recorded_at": "2026-02-01T00:00:00.123456Z"});
    (Arc::new(payload), Arc::new(metadata.to_string()))
}

/// Runs `clients` loops of `op(client, n)` for `warmup`, then measures for `duration`.
pub(crate) async fn phase<F, Fut>(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> anyhow::Result<PhaseResult>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let op = op.clone();
        tasks.spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut n: u64 = 0;
            loop {
                let begin = Instant::now();
                if begin >= end {
                    break;
                }
                n += 1;
                op(client, n).await?;
                if begin >= measure_from {
                    let micros = begin.elapsed().as_micros() as u64;
                    histogram.record(micros.max(1)).expect("within bounds");
                }
            }
            Ok::<_, anyhow::Error>(histogram)
        });
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    while let Some(joined) = tasks.join_next().await {
        total.add(joined??).expect("same bounds");
    }
    let measured = end.saturating_duration_since(measure_from).as_secs_f64();
    Ok(PhaseResult {
        commands: total.len(),
        per_second: total.len() as f64 / measured,
        p50_ms: total.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn print_row(clients: usize, path: &str, result: &PhaseResult, ratio: Option<f64>) {
    println!(
        "{:>7}  {:<6}  {:>9}  {:>10.0}  {:>8.2}  {:>8.2}  {:>13}",
        clients,
        path,
        result.commands,
        result.per_second,
        result.p50_ms,
        result.p99_ms,
        ratio.map(|r| format!("{r:.2}")).unwrap_or_default()
    );
}

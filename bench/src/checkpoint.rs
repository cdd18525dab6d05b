//! `bench checkpoint`: whether the audit tree keeps up with the write path, and whether the write
//! path notices it. The engine workload of `bench append` (N clients, each appending one
//! `text_delta` frame per command to its own run) runs twice per round on fresh scratch journals:
//! once alone and once with the `audit-tree` task `serve` runs ([`run_tree_maintainer`] with the
//! default checkpoint cadence of `serve`) extending the Merkle tree and taking checkpoints. It
//! prints the throughput ratio (with tree / without), the tree's lag (journal events − tree
//! leaves) sampled during the run, and how long the tree takes to catch up once the load stops.
//! The order of the two phases alternates between rounds, and an unmeasured phase runs first: on
//! an idle server the first phase of a run was up to 35% faster than any later one (no WAL
//! checkpoint yet, caches cold for nobody), which favoured whichever phase came first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use engine::audit_log::store::run_tree_maintainer;
use engine::audit_log::{AuditKey, AuditStore};
use engine::clock::Stamps;
use engine::notify::JournalNotifier;
use engine::{Database, DatabaseConfig, Engine, EngineConfig};
use tokio_util::sync::CancellationToken;

use crate::append::{create_run, engine_phase, run_id, PhaseResult};

/// A journal backend to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JournalKind {
    Postgres,
    Sqlite,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// PostgreSQL server on which scratch databases are created and dropped (the role needs
    /// CREATEDB); needed for `--journals postgres`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Journals to measure, comma separated (`sqlite` is an embedded file in a temporary
    /// directory, `synchronous=FULL`).
    #[arg(long, value_delimiter = ',', default_value = "postgres")]
    pub journals: Vec<JournalKind>,

    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,

    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,

    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,

    /// Size of the frame text in each command's payload, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,

    /// Rounds of (without tree, with tree); the order alternates from one round to the next.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,

    /// Interval between lag samples, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub sample_ms: u64,

    /// Give up waiting for the tree to catch up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub catch_up_timeout_secs: u64,
}

/// One phase: the append figures, and with the tree its lag.
struct Measured {
    append: PhaseResult,
    tree: Option<TreeFigures>,
}

struct TreeFigures {
    /// Lag samples inside the measured window.
    max_lag: u64,
    mean_lag: f64,
    /// Leaves added per second inside the measured window.
    leaves_per_second: f64,
    /// Journal events and lag when the clients stopped.
    events_at_stop: u64,
    lag_at_stop: u64,
    /// From the clients stopping to the tree holding every event.
    catch_up: Duration,
    checkpoints: usize,
    latest_checkpoint_size: u64,
}

/// Runs the benchmark and prints a table per journal.
///
/// # Errors
/// When a scratch journal cannot be created, or the tree does not catch up in time.
pub async fn run(args: CheckpointArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be positive");
    anyhow::ensure!(args.rounds > 0, "--rounds must be positive");
    anyhow::ensure!(!args.journals.is_empty(), "--journals needs a journal");
    let config = openagents_runtime::audit::log::AuditLogArgs::default().maintainer_config();
    println!(
        "bench checkpoint: {} clients, {} bytes of frame text per command, {}s per phase after {}s warm-up, {} round(s); \
         audit-tree task as in serve (batch {}, checkpoint every {} events or {} ms, poll {} ms, settle {} ms)",
        args.clients,
        args.payload_bytes,
        args.duration_secs,
        args.warmup_secs,
        args.rounds,
        config.batch,
        config.checkpoint_every_events,
        config.checkpoint_every.as_millis(),
        config.poll.as_millis(),
        config.settle.as_millis(),
    );
    for journal in &args.journals {
        measure_journal(&args, *journal).await?;
    }
    Ok(())
}

async fn measure_journal(args: &CheckpointArgs, journal: JournalKind) -> anyhow::Result<()> {
    println!();
    println!(
        "journal: {}",
        match journal {
            JournalKind::Postgres => "postgres",
            JournalKind::Sqlite => "sqlite (embedded, synchronous=FULL)",
        }
    );
    println!(
        "{:>5}  {:<4}  {:>9}  {:>8}  {:>7}  {:>7}  {:>8}  {:>9}  {:>9}  {:>11}  {:>11}  {:>11}",
        "round",
        "tree",
        "commands",
        "cmds/s",
        "p50 ms",
        "p99 ms",
        "lag max",
        "lag mean",
        "leaves/s",
        "lag at stop",
        "catch-up ms",
        "checkpoints"
    );
    let (mut off_commands, mut on_commands) = (0u64, 0u64);
    let mut worst_catch_up = Duration::ZERO;
    let mut worst_lag = 0u64;
    let mut round_ratios = Vec::new();
    let warm_up = phase_on_fresh_journal(args, journal, false).await?;
    println!(
        "{:>5}  {:<4}  {:>9}  {:>8.0}  {:>7.2}  {:>7.2}  (warm-up, not counted)",
        "-",
        "off",
        warm_up.append.commands,
        warm_up.append.per_second,
        warm_up.append.p50_ms,
        warm_up.append.p99_ms,
    );
    for round in 0..args.rounds {
        let (mut round_off, mut round_on) = (0.0, 0.0);
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_tree in order {
            let measured = phase_on_fresh_journal(args, journal, with_tree).await?;
            let a = &measured.append;
            match &measured.tree {
                Some(t) => {
                    on_commands += a.commands;
                    round_on = a.per_second;
                    worst_catch_up = worst_catch_up.max(t.catch_up);
                    worst_lag = worst_lag.max(t.max_lag);
                    println!(
                        "{:>5}  {:<4}  {:>9}  {:>8.0}  {:>7.2}  {:>7.2}  {:>8}  {:>9.0}  {:>9.0}  {:>11}  {:>11.0}  {:>11}",
                        round + 1,
                        "on",
                        a.commands,
                        a.per_second,
                        a.p50_ms,
                        a.p99_ms,
                        t.max_lag,
                        t.mean_lag,
                        t.leaves_per_second,
                        format!("{}/{}", t.lag_at_stop, t.events_at_stop),
                        t.catch_up.as_secs_f64() * 1000.0,
                        format!("{} (@{})", t.checkpoints, t.latest_checkpoint_size),
                    );
                }
                None => {
                    off_commands += a.commands;
                    round_off = a.per_second;
                    println!(
                        "{:>5}  {:<4}  {:>9}  {:>8.0}  {:>7.2}  {:>7.2}",
                        round + 1,
                        "off",
                        a.commands,
                        a.per_second,
                        a.p50_ms,
                        a.p99_ms,
                    );
                }
            }
        }
        round_ratios.push(round_on / round_off);
    }
    let ratio = on_commands as f64 / off_commands.max(1) as f64;
    let shown: Vec<_> = round_ratios.iter().map(|r| format!("{r:.3}")).collect();
    round_ratios.sort_by(f64::total_cmp);
    println!(
        "per round (with / without): {}; median {:.3}",
        shown.join(", "),
        round_ratios[round_ratios.len() / 2]
    );
    println!(
        "throughput with tree / without: {ratio:.3} (target >= 0.95: {}); worst lag during the run {worst_lag} events; \
         worst catch-up after the load stopped {:.0} ms",
        if ratio >= 0.95 { "met" } else { "not met" },
        worst_catch_up.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// A fresh, migrated journal of `journal`'s kind with a pool of `connections`, durable as
/// `serve`'s: a scratch database on the PostgreSQL server at `database_url`, or an embedded file
/// (`synchronous=FULL`) in a temporary directory. [`Scratch::dispose`] removes it.
pub(crate) async fn scratch_journal(
    database_url: Option<&str>,
    journal: JournalKind,
    connections: u32,
) -> anyhow::Result<(Database, Scratch)> {
    match journal {
        JournalKind::Postgres => {
            let Some(url) = database_url else {
                bail!("--journals postgres needs --database-url (or DATABASE_URL)")
            };
            let name = format!(
                "oa_bench_{}_{}",
                chrono::Utc::now().timestamp(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let mut admin = admin(url).await?;
            sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE \"{name}\"").as_str())
                .await
                .context("create the scratch database (the role needs CREATEDB)")?;
            let database = Database::connect(&DatabaseConfig::Postgres {
                url: crate::scratch::with_database(url, &name),
                max_connections: connections,
            })
            .await?;
            database.migrate().await?;
            Ok((
                database,
                Scratch::Postgres {
                    url: url.to_owned(),
                    name,
                },
            ))
        }
        JournalKind::Sqlite => {
            // The write path as `serve` runs it (`synchronous=FULL`), not a replay's throwaway
            // scratch journal (which skips fsync).
            let dir = tempfile::tempdir().context("create a temporary directory")?;
            let database = Database::connect(&DatabaseConfig::Sqlite {
                path: dir.path().join(engine::db::SQLITE_FILE),
            })
            .await?;
            database.migrate().await?;
            Ok((database, Scratch::Sqlite(dir)))
        }
    }
}

async fn admin(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .context("connect to PostgreSQL (--database-url)")
}

pub(crate) enum Scratch {
    Postgres { url: String, name: String },
    Sqlite(tempfile::TempDir),
}

impl Scratch {
    pub(crate) async fn dispose(self, database: &Database) {
        database.close().await;
        match self {
            Scratch::Postgres { url, name } => {
                if let Ok(mut admin) = admin(&url).await {
                    let _ = sqlx::Executor::execute(
                        &mut admin,
                        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                    )
                    .await;
                }
            }
            Scratch::Sqlite(dir) => drop(dir),
        }
    }
}

/// Events in the journal (committed and visible now).
async fn journal_events(database: &Database) -> anyhow::Result<u64> {
    let count: i64 = match database {
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(pool)
                .await?
        }
        Database::Sqlite { pool, .. } => {
            sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(pool)
                .await?
        }
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// `(seconds since the phase began, journal events, tree leaves)`.
type Sample = (f64, u64, u64);

async fn phase_on_fresh_journal(
    args: &CheckpointArgs,
    journal: JournalKind,
    with_tree: bool,
) -> anyhow::Result<Measured> {
    // The clients' connections, plus two for the sampler and the tree task (in both phases, so
    // the pool is the same size with and without the tree).
    let connections = u32::try_from(args.clients).unwrap_or(u32::MAX).max(2) + 2;
    let (database, scratch) =
        scratch_journal(args.database_url.as_deref(), journal, connections).await?;
    let result = phase_on(args, &database, with_tree).await;
    scratch.dispose(&database).await;
    result
}

async fn phase_on(
    args: &CheckpointArgs,
    database: &Database,
    with_tree: bool,
) -> anyhow::Result<Measured> {
    let notifier = Arc::new(JournalNotifier::new());
    let engine = Arc::new(Engine::new(
        database.journal(),
        Stamps::system(),
        notifier.clone(),
        EngineConfig::default(),
    ));
    for client in 0..args.clients {
        create_run(&engine, &run_id(0, client)).await?;
    }
    let store = AuditStore::new(database);
    // The tree row exists in both phases, so the sampler reads the same thing in both.
    store.state().await.context("create the audit tree row")?;
    let stop_tree = CancellationToken::new();
    let tree_task = with_tree.then(|| {
        let (key, _) = AuditKey::generate();
        tokio::spawn(run_tree_maintainer(
            store.clone(),
            key,
            openagents_runtime::audit::log::AuditLogArgs::default().maintainer_config(),
            notifier.appended(),
            stop_tree.clone(),
        ))
    });

    // The sampler runs in both phases (same load on the journal), reading the journal's event
    // count and the tree's size.
    let started = Instant::now();
    let stop_sampler = CancellationToken::new();
    let sampler = {
        let database = database.clone();
        let store = store.clone();
        let stop = stop_sampler.clone();
        let every = Duration::from_millis(args.sample_ms.max(10));
        tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok::<_, anyhow::Error>(samples),
                    () = tokio::time::sleep(every) => {}
                }
                let size = store.state().await?.tree_size;
                let events = journal_events(&database).await?;
                samples.push((started.elapsed().as_secs_f64(), events, size));
            }
        })
    };
    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let append = engine_phase(
        &engine,
        0,
        args.clients,
        warmup,
        duration,
        Arc::new("x".repeat(args.payload_bytes)),
    )
    .await;
    let stopped = Instant::now();
    stop_sampler.cancel();
    let samples = sampler.await.context("sampler task")??;
    let append = append?;

    let Some(tree_task) = tree_task else {
        return Ok(Measured { append, tree: None });
    };
    let events_at_stop = journal_events(database).await?;
    let size_at_stop = store.state().await?.tree_size;
    let deadline = stopped + Duration::from_secs(args.catch_up_timeout_secs);
    let catch_up = loop {
        let size = store.state().await?.tree_size;
        if size >= events_at_stop {
            break stopped.elapsed();
        }
        if Instant::now() > deadline {
            bail!(
                "the audit tree reached {size} of {events_at_stop} events {}s after the load stopped",
                args.catch_up_timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop_tree.cancel();
    tree_task.await.context("audit-tree task")??;
    let checkpoints = store.checkpoints().await?;

    let window_start = warmup.as_secs_f64();
    let window_end = window_start + duration.as_secs_f64();
    let in_window: Vec<&Sample> = samples
        .iter()
        .filter(|(t, _, _)| *t >= window_start && *t <= window_end)
        .collect();
    let lags: Vec<u64> = in_window
        .iter()
        .map(|(_, events, size)| events.saturating_sub(*size))
        .collect();
    let leaves_per_second = match (in_window.first(), in_window.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            last.2.saturating_sub(first.2) as f64 / (last.0 - first.0)
        }
        _ => 0.0,
    };
    Ok(Measured {
        append,
        tree: Some(TreeFigures {
            max_lag: lags.iter().copied().max().unwrap_or(0),
            mean_lag: lags.iter().sum::<u64>() as f64 / lags.len().max(1) as f64,
            leaves_per_second,
            events_at_stop,
            lag_at_stop: events_at_stop.saturating_sub(size_at_stop),
            catch_up,
            checkpoints: checkpoints.len(),
            latest_checkpoint_size: checkpoints.last().map_or(0, |c| c.tree_size),
        }),
    })
}

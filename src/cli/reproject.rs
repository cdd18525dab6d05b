//! `openagents-runtime reproject`: rebuild read models from the journal.
//!
//! - `--all` (optionally narrowed with `--projector`): a full rebuild of each read model into
//!   its shadow table, swapped in at the end with a new epoch of its topic, so subscribed
//!   clients learn their cursor is stale. If a running `serve` holds a projector's lease, that
//!   process performs the rebuild (the request is recorded in the checkpoint row) and this
//!   command waits for it; otherwise this command takes the lease and rebuilds itself. Other
//!   projectors keep running meanwhile.
//! - `--run-id ID` / `--worker-id ID` / `--payment-id ID`: re-folds that entity's documents
//!   from the journal (up to each projector's checkpoint) and rewrites those that differ, each
//!   as a new document version with a stream row. No epoch change.
//! - `--status`: prints every projector's checkpoint, lease and rebuild state.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use engine::journal::GlobalCursor;
use engine::Journal;
use projectors::runner::{all_projectors, now_ms, DynProjector, ProjectorContext, RunnerConfig};
use projectors::store::{Checkpoint, Repaired};
use projectors::{SyncNotifier, SyncStore};
use tokio_util::sync::CancellationToken;

use crate::cli::DatabaseArgs;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["all", "run_id", "worker_id", "payment_id", "status"])))]
pub struct ReprojectArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Rebuild every read model (or those named with --projector) from the whole journal.
    #[arg(long)]
    pub all: bool,

    /// With --all: only these projectors (run_summaries, codex_worker_summaries,
    /// codex_worker_events, payments); repeatable.
    #[arg(long = "projector", requires = "all")]
    pub projectors: Vec<String>,

    /// Repair the run summary of this run.
    #[arg(long)]
    pub run_id: Option<String>,

    /// Repair the summary and event documents of this worker.
    #[arg(long)]
    pub worker_id: Option<String>,

    /// Repair the document of this payment (its payment hash).
    #[arg(long)]
    pub payment_id: Option<String>,

    /// Print each projector's checkpoint and exit.
    #[arg(long)]
    pub status: bool,

    /// Journal events folded per transaction during a rebuild.
    #[arg(long, default_value_t = 2_000)]
    pub batch_size: usize,

    /// Give up waiting after this many seconds (a rebuild another process performs).
    #[arg(long, default_value_t = 3_600)]
    pub timeout_secs: u64,
}

/// Runs `reproject`.
///
/// # Errors
/// When the database cannot be opened, a projector name is unknown, or a rebuild or repair fails.
pub async fn run(args: ReprojectArgs) -> anyhow::Result<()> {
    let config = args.database.config();
    let database = engine::Database::connect(&config)
        .await
        .with_context(|| format!("open {}", config.describe()))?;
    let pending = database.pending_migrations().await?;
    if !pending.is_empty() {
        bail!(
            "the database has unapplied migrations {pending:?}: run `migrate` (or `serve`) first"
        );
    }
    let projectors = all_projectors();
    let store = SyncStore::new(&database, projectors.iter().map(|p| p.spec()));
    let journal = database.journal();
    let notifier = Arc::new(SyncNotifier::new());
    let context = Arc::new(ProjectorContext::new(
        store.clone(),
        journal.clone(),
        notifier,
        tokio::sync::watch::channel(0).1,
        RunnerConfig {
            batch_size: args.batch_size.max(1),
            ..RunnerConfig::default()
        },
    ));
    let result = if args.status {
        status(&store).await
    } else if args.all {
        rebuild_all(&context, &projectors, &args).await
    } else {
        let (id, types): (&str, &[&str]) = if let Some(id) = &args.run_id {
            (id, &["run"])
        } else if let Some(id) = &args.worker_id {
            (id, &["codex_worker"])
        } else if let Some(id) = &args.payment_id {
            (id, &["lightning_payment"])
        } else {
            unreachable!("clap requires one of the group")
        };
        repair(&context, &projectors, id, types).await
    };
    if let Some(pool) = store.pg_pool() {
        // Wake running `serve` processes' gateways (a repair appended stream rows).
        let _ = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(projectors::notify::PG_CHANNEL)
            .bind(r#"{"from":"reproject","topics":[]}"#)
            .execute(pool)
            .await;
    }
    database.close().await;
    result
}

fn describe(checkpoint: &Checkpoint, now: i64) -> String {
    let lease = match &checkpoint.lease_owner {
        Some(owner) if checkpoint.lease_expires_at_ms >= now => {
            format!(
                "held by {owner} ({} ms left)",
                checkpoint.lease_expires_at_ms - now
            )
        }
        Some(owner) => format!("expired (last {owner})"),
        None => "free".to_owned(),
    };
    let rebuild = match (&checkpoint.rebuild, checkpoint.rebuild_requested) {
        (Some(r), _) => format!(
            "rebuilding v{} ({} events, at {})",
            r.version, r.events, r.cursor
        ),
        (None, true) => "rebuild requested".to_owned(),
        (None, false) => "live".to_owned(),
    };
    format!(
        "{:<24} {:<32} v{} cursor {} events {} lease {} — {}",
        checkpoint.projector,
        checkpoint.topic,
        checkpoint.projection_version,
        checkpoint.cursor,
        checkpoint.events_projected,
        lease,
        rebuild
    )
}

async fn status(store: &SyncStore) -> anyhow::Result<()> {
    let checkpoints = store.checkpoints().await?;
    if checkpoints.is_empty() {
        println!("no projector has run on this database yet");
    }
    let now = now_ms();
    for checkpoint in &checkpoints {
        println!("{}", describe(checkpoint, now));
    }
    let topics: Vec<&str> = checkpoints.iter().map(|c| c.topic.as_str()).collect();
    for state in store.topic_states(&topics).await? {
        println!(
            "{:<32} head {} retention_floor {} epoch {} (from {})",
            state.topic,
            state.head_watermark,
            state.retention_floor,
            state.epoch,
            state.epoch_start
        );
    }
    Ok(())
}

async fn rebuild_all(
    context: &Arc<ProjectorContext>,
    projectors: &[Arc<dyn DynProjector>],
    args: &ReprojectArgs,
) -> anyhow::Result<()> {
    let selected: Vec<Arc<dyn DynProjector>> = if args.projectors.is_empty() {
        projectors.to_vec()
    } else {
        let mut out = Vec::new();
        for name in &args.projectors {
            let Some(p) = projectors.iter().find(|p| p.spec().name == name) else {
                let known: Vec<_> = projectors.iter().map(|p| p.spec().name).collect();
                bail!("unknown projector {name:?}; known: {}", known.join(", "));
            };
            out.push(p.clone());
        }
        out
    };
    let total = context
        .journal
        .count_after(GlobalCursor::START, i64::MAX as u64)
        .await?;
    let requested_at = now_ms();
    for projector in &selected {
        let spec = projector.spec();
        context.store.register(&spec, requested_at).await?;
        context
            .store
            .request_rebuild(spec.name, requested_at)
            .await?;
    }
    println!(
        "rebuilding {} read model(s) from {total} journal events",
        selected.len()
    );
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for projector in &selected {
        let future = projector.run_until_rebuilt(context.clone(), requested_at, shutdown.clone());
        let name = projector.spec().name;
        tasks.spawn(async move { (name, future.await) });
    }
    let bars = indicatif::MultiProgress::new();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !terminal {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let say = |line: String| {
        if terminal {
            let _ = bars.println(line);
        } else {
            println!("{line}");
        }
    };
    let style =
        indicatif::ProgressStyle::with_template("{prefix:<24} [{bar:30}] {pos}/{len} events {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    let progress: Vec<(String, indicatif::ProgressBar)> = selected
        .iter()
        .map(|p| {
            let bar = bars.add(indicatif::ProgressBar::new(total));
            bar.set_style(style.clone());
            bar.set_prefix(p.spec().name);
            (p.spec().name.to_owned(), bar)
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut failures = Vec::new();
    let mut done = 0;
    while done < selected.len() {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                done += 1;
                let (name, result) = joined.context("rebuild task")?;
                let bar = progress.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone());
                match result {
                    Ok(Some(swapped)) => {
                        if let Some(bar) = bar { bar.finish_with_message("done"); }
                        say(format!(
                            "{name}: rebuilt here; {} documents, epoch {} starts at watermark {}",
                            swapped.docs, swapped.epoch, swapped.epoch_start
                        ));
                    }
                    Ok(None) => {
                        if let Some(bar) = bar { bar.finish_with_message("done"); }
                        say(format!("{name}: rebuilt by the process holding its lease"));
                    }
                    Err(error) => {
                        if let Some(bar) = bar { bar.abandon_with_message("failed"); }
                        failures.push(format!("{name}: {error}"));
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for checkpoint in context.store.checkpoints().await? {
                    if let Some((_, bar)) = progress.iter().find(|(n, _)| *n == checkpoint.projector) {
                        if let Some(rebuild) = &checkpoint.rebuild {
                            bar.set_position(rebuild.events.min(total));
                            bar.set_message(match &checkpoint.lease_owner {
                                Some(owner) if *owner != context.instance => format!("(by {owner})"),
                                _ => String::new(),
                            });
                        }
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    shutdown.cancel();
                    bail!("gave up after {} s; the rebuild continues wherever it runs", args.timeout_secs);
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("rebuild failed: {}", failures.join("; "))
    }
}

async fn repair(
    context: &Arc<ProjectorContext>,
    projectors: &[Arc<dyn DynProjector>],
    id: &str,
    aggregate_types: &[&str],
) -> anyhow::Result<()> {
    let mut any = false;
    for projector in projectors {
        if !projector
            .aggregate_types()
            .iter()
            .any(|t| aggregate_types.contains(t))
        {
            continue;
        }
        let spec = projector.spec();
        context.store.register(&spec, now_ms()).await?;
        let outcomes = projector
            .repair(context.clone(), id.to_owned())
            .await
            .with_context(|| format!("repair {} of {id}", spec.name))?;
        for (doc_key, outcome) in outcomes {
            any = true;
            match outcome {
                Repaired::Unchanged => println!("{doc_key}: matches the journal"),
                Repaired::Written {
                    doc_version,
                    watermark,
                } => println!(
                    "{doc_key}: rewritten as version {doc_version} (watermark {watermark} of {})",
                    spec.topic
                ),
            }
        }
    }
    if !any {
        bail!("no events of {id} up to the projectors' checkpoints");
    }
    Ok(())
}

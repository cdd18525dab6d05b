//! `bench replay`: fixture replay rate on a journal backend, beside a raw baseline measured in the
//! same run (the same number of events appended straight to the journal, one append per event,
//! without the engine).
//!
//! With `--generate-runs N`, a generated corpus of N runs is written to a temporary directory
//! (blessed by this build, not timed) and checked the way `replay --check DIR` checks it: every
//! output produced and compared, `--jobs` fixtures at once. Its baseline is the same number of
//! events appended by `--jobs` appenders, each into its own scratch journal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use engine::journal::{AppendRequest, EventMetadata, NewEvent};
use engine::Journal;
use serde_json::json;

use openagents_runtime::replay::fixture::Fixture;
use openagents_runtime::replay::generate::CorpusSpec;
use openagents_runtime::replay::scratch::{ScratchDb, ScratchTarget};
use openagents_runtime::replay::{
    default_jobs, diff, expand_inputs, on_job_threads, projection, replay_files, runner,
    write_corpus, ItemStatus, Mode,
};

/// `openagents-bench replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchReplayArgs {
    /// Fixture files or directories.
    #[arg(value_name = "FIXTURE", default_value = "replay-fixtures")]
    pub inputs: Vec<PathBuf>,
    /// How many times each fixture is replayed.
    #[arg(long, default_value_t = 20)]
    pub iterations: u32,
    /// Replay on PostgreSQL (fresh databases on this server) instead of embedded SQLite.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Check a generated corpus of this many runs instead of the named fixtures.
    #[arg(long, value_name = "RUNS")]
    pub generate_runs: Option<usize>,
    /// Seed of the generated corpus.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fixtures checked at once, and appenders of the baseline (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// Runs the benchmark and prints the rates and their ratio.
///
/// # Errors
/// When a fixture cannot be read or run.
pub async fn run(args: BenchReplayArgs) -> anyhow::Result<()> {
    let target = ScratchTarget::from_url(args.database_url.as_deref());
    if let Some(runs) = args.generate_runs {
        let jobs = args.jobs.unwrap_or_else(default_jobs).max(1);
        return corpus(&target, CorpusSpec::new(runs, args.seed), jobs).await;
    }
    let mut fixtures = Vec::new();
    for path in expand_inputs(&args.inputs)? {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        if value.get("schema").and_then(|s| s.as_str())
            == Some(openagents_runtime::replay::FIXTURE_SCHEMA)
        {
            fixtures.push(serde_json::from_value::<Fixture>(value)?);
        }
    }
    if fixtures.is_empty() {
        bail!("no fixtures found");
    }
    // Replay: one fresh journal per iteration, all fixtures run into it in turn.
    let mut replay_events = 0u64;
    let mut replay_secs = 0f64;
    for _ in 0..args.iterations {
        for fixture in &fixtures {
            let scratch = ScratchDb::create(&target).await?;
            let started = Instant::now();
            let produced = runner::run_fixture(fixture, scratch.database.journal()).await?;
            replay_secs += started.elapsed().as_secs_f64();
            replay_events += produced.event_count as u64;
            scratch.dispose().await;
        }
    }
    // Baseline: the same number of events, appended one per call to one fresh journal.
    let raw_secs = raw_appends(&target, replay_events, 1).await?;
    let replay_rate = replay_events as f64 / replay_secs.max(1e-9);
    let raw_rate = replay_events as f64 / raw_secs.max(1e-9);
    println!("backend: {}", target.backend_name());
    println!(
        "fixtures: {} x {} iterations, {replay_events} events",
        fixtures.len(),
        args.iterations
    );
    println!(
        "fixture replay: {replay_rate:.0} events/s (engine, chain hashes, receipts, artifacts)"
    );
    println!("raw appends:    {raw_rate:.0} events/s (one event per append, no engine)");
    println!("ratio:          {:.2}", replay_rate / raw_rate);
    Ok(())
}

/// `--generate-runs`: generate and bless a corpus, then time its check beside raw appends.
async fn corpus(target: &ScratchTarget, spec: CorpusSpec, jobs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let started = Instant::now();
    let written = write_corpus(dir.path(), &spec, target, jobs).await?;
    let bless_secs = started.elapsed().as_secs_f64();
    let files = expand_inputs(&[dir.path().to_owned()])?;
    let started = Instant::now();
    let results = replay_files(&files, target, Mode::Check, jobs).await?;
    let check_secs = started.elapsed().as_secs_f64();
    let mut events = 0u64;
    for (file, items) in &results {
        for item in items {
            if let ItemStatus::Diverged(report) = &item.status {
                bail!("{} diverged:\n{report}", file.display());
            }
            events += item.events as u64;
        }
    }
    let raw_secs = raw_appends(target, events, jobs).await?;
    let replay_rate = events as f64 / check_secs.max(1e-9);
    let raw_rate = events as f64 / raw_secs.max(1e-9);
    println!("backend: {}", target.backend_name());
    println!(
        "corpus: {} runs in {} fixtures, {events} events (seed {}; generated and blessed in {bless_secs:.1} s)",
        written.runs, written.fixtures, spec.seed
    );
    println!(
        "jobs:   {jobs} fixtures at once; baseline: {jobs} appenders, one scratch journal each"
    );
    println!(
        "replay --check: {replay_rate:.0} events/s ({check_secs:.2} s: engine, receipts, read models, sync stream, comparison)"
    );
    println!(
        "raw appends:    {raw_rate:.0} events/s ({raw_secs:.2} s: one event per append, no engine)"
    );
    println!("ratio:          {:.2}", replay_rate / raw_rate);
    phases(&files[..files.len().min(10)], target).await
}

/// Where one fixture's check spends its time, summed over `files` run one at a time, on a job
/// thread as `replay` runs them ([`on_job_threads`]).
async fn phases(files: &[PathBuf], target: &ScratchTarget) -> anyhow::Result<()> {
    let (files, target) = (files.to_vec(), target.clone());
    let measured = on_job_threads(vec![()], 1, move |()| {
        let (files, target) = (files.clone(), target.clone());
        async move { phase_times(&files, &target).await }
    })
    .await?;
    let (spent, events, count) = measured.into_iter().next().expect("one job");
    print_phases(&spent, events, count);
    Ok(())
}

/// Seconds per phase, events and fixtures of checking `files` one at a time.
async fn phase_times(
    files: &[PathBuf],
    target: &ScratchTarget,
) -> anyhow::Result<([f64; 6], usize, usize)> {
    let mut spent = [0f64; 6];
    let mut events = 0usize;
    for file in files {
        let mut clock = Instant::now();
        let mut lap = |slot: usize, spent: &mut [f64; 6]| {
            spent[slot] += clock.elapsed().as_secs_f64();
            clock = Instant::now();
        };
        let fixture: Fixture = serde_json::from_slice(&std::fs::read(file)?)?;
        lap(0, &mut spent);
        let scratch = ScratchDb::create(target).await?;
        lap(1, &mut spent);
        let mut produced = runner::run_fixture(&fixture, scratch.database.journal()).await?;
        lap(2, &mut spent);
        projection::add_outputs(&scratch.database, &mut produced.output).await?;
        lap(3, &mut spent);
        let expected = fixture.expected.as_ref().context("blessed")?;
        if let Some(d) = diff::first_divergence(expected, &produced.output) {
            bail!("{} diverged: {d}", file.display());
        }
        lap(4, &mut spent);
        scratch.dispose().await;
        lap(5, &mut spent);
        events += produced.event_count;
    }
    Ok((spent, events, files.len()))
}

fn print_phases(spent: &[f64; 6], events: usize, fixtures: usize) {
    let total: f64 = spent.iter().sum();
    println!(
        "phases of {fixtures} fixtures run one at a time ({events} events, {:.0} events/s):",
        events as f64 / total.max(1e-9)
    );
    for (name, secs) in [
        "read and parse the fixture",
        "create the scratch journal",
        "run the steps (engine, receipts) and the journal outputs",
        "project (every read model) and render",
        "compare with expected",
        "dispose",
    ]
    .iter()
    .zip(spent)
    {
        println!(
            "  {name:<58} {:>5.1}% {:>7.1} us/event",
            100.0 * secs / total.max(1e-9),
            1e6 * secs / events.max(1) as f64
        );
    }
}

/// Seconds to append `events` events, one per append, by `jobs` appenders each on its own fresh
/// scratch journal (created before the clock starts), on the same job threads as the replay
/// ([`on_job_threads`]: a thread with a single-threaded runtime per job).
async fn raw_appends(target: &ScratchTarget, events: u64, jobs: usize) -> anyhow::Result<f64> {
    let share = events.div_ceil(jobs as u64);
    // Every appender creates its journal, then waits for the others: the clock starts when the
    // last one is ready.
    let ready = Arc::new(std::sync::Barrier::new(jobs));
    let target = target.clone();
    let spans = on_job_threads((0..jobs).collect(), jobs, move |n| {
        let (target, ready) = (target.clone(), ready.clone());
        async move {
            // Waits at the barrier even when its journal could not be created, so no appender
            // waits forever for it; the error is returned after.
            let scratch = ScratchDb::create(&target).await;
            ready.wait();
            let scratch = scratch?;
            let journal = scratch.database.journal();
            let count = share.min(events.saturating_sub(share * n as u64));
            let started = Instant::now();
            let mut metadata = EventMetadata::new();
            metadata.insert("recorded_at".into(), "2026-02-01T00:00:00Z".into());
            for i in 0..count {
                let event = NewEvent {
                    event_type: "bench.raw".into(),
                    event_version: "1.0".into(),
                    payload: json!({"RunStarted": {"source": "runtime", "started_at": "2026-02-01T00:00:00Z"}}),
                    metadata: metadata.clone(),
                };
                let id = format!("agg-{}", i / 16);
                journal
                    .append(AppendRequest {
                        aggregate_type: "bench",
                        aggregate_id: &id,
                        expected_sequence: i % 16,
                        events: std::slice::from_ref(&event),
                        idempotency: None,
                        nonce: None,
                    })
                    .await?;
            }
            let finished = Instant::now();
            scratch.dispose().await;
            anyhow::Ok((started, finished))
        }
    })
    .await?;
    let start = spans.iter().map(|s| s.0).min().expect("at least one job");
    let end = spans.iter().map(|s| s.1).max().expect("at least one job");
    Ok(end.duration_since(start).as_secs_f64())
}

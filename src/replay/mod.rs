//! `openagents-runtime replay`: deterministic replay.
//!
//! - Fixtures (`replay-fixtures/*.json`, `openagents.replay_fixture.v1`): each runs on a fresh
//!   journal (embedded by default, PostgreSQL with `--database-url`) through the real engine, the
//!   journal is projected by every read model, and every output (events, chains, receipts, replay
//!   hashes, read models, the sync stream) is compared with the fixture's `expected`, key order
//!   included; `--bless` rewrites `expected`.
//! - REPLAY.jsonl files: the stream is re-executed and the regenerated REPLAY.jsonl must equal the
//!   input byte for byte.
//! - The original runtime's workflow histories (`openagents.runtime.workflow_history_compat.v1`):
//!   each is re-executed and must give its expected status, trajectory and replay hashes.
//! - `--journal`: the drift check of a live journal (see [`journal_check`]).
//! - `--generate-runs N DIR`: writes a generated corpus of N runs into DIR, blessed by this build
//!   (see [`generate`]).
//!
//! Fixture files replay side by side (`--jobs`, each on its own scratch journal); results are
//! printed in file order.
//!
//! # Layout
//! - [`fixture`]: the fixture format.
//! - [`runner`]: running one fixture and collecting its outputs.
//! - [`projection`]: projecting a replayed journal and rendering its read models and sync stream.
//! - [`diff`]: the first divergence between expected and actual.
//! - [`scratch`]: throwaway journals.
//! - [`journal_check`]: the `--journal` drift check.
//! - [`generate`]: a generated corpus of many runs (`--generate-runs`).
//! - [`read_model_drift`]: its comparison of the live read models with their rebuild.

pub mod diff;
pub mod fixture;
pub mod generate;
pub mod journal_check;
pub mod projection;
pub mod read_model_drift;
pub mod runner;
pub mod scratch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aggregates::canonical::sha256_prefixed;
use anyhow::{anyhow, bail, Context};
use engine::artifacts::history::{
    reexecute_history, reexecute_stream, HistoryCorpus, StreamStep, HISTORY_SCHEMA,
};
use engine::artifacts::render_replay;
use engine::artifacts::replay::parse_replay;
use engine::clock::{ManualClock, SequentialIds, Stamps};
use engine::notify::JournalNotifier;
use engine::{Engine, EngineConfig};
use serde_json::{Map, Value};

pub use fixture::{Fixture, FIXTURE_SCHEMA};
pub use scratch::{ScratchDb, ScratchTarget};

/// `openagents-runtime replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Fixture files, REPLAY.jsonl files, compat history corpora, or directories of them
    /// (`*.json`, `*.jsonl`, not recursive).
    #[arg(value_name = "FIXTURE")]
    pub inputs: Vec<PathBuf>,
    /// Compare every output with the expectations; print the first divergence and exit non-zero
    /// on any difference (the default).
    #[arg(long, conflicts_with_all = ["bless", "print"])]
    pub check: bool,
    /// Rewrite the fixtures' `expected` with what this build produces.
    #[arg(long, conflicts_with = "print")]
    pub bless: bool,
    /// Print each fixture's produced outputs as JSON instead of comparing.
    #[arg(long)]
    pub print: bool,
    /// Replay on fresh PostgreSQL databases created on this server (the role needs CREATEDB)
    /// instead of embedded SQLite. With `--journal`: the live journal to check.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Drift check: copy the live journal (`--database-url`, or the embedded one in
    /// `--data-dir`) into a scratch journal, recompute hashes and receipts, re-project it and
    /// compare with the live read models.
    #[arg(long, conflicts_with_all = ["bless", "print"])]
    pub journal: bool,
    /// Data directory of the embedded journal, for `--journal`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".openagents-runtime",
        env = "OA_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// Where `--journal` builds its scratch copy: a PostgreSQL server URL, else embedded SQLite.
    #[arg(long, value_name = "URL")]
    pub scratch_database_url: Option<String>,
    /// Write a generated corpus of this many runs into the one directory named (created if
    /// missing), its `expected` produced by this build; then check it with `replay --check DIR`.
    #[arg(long, value_name = "RUNS", conflicts_with_all = ["journal", "print", "check"])]
    pub generate_runs: Option<usize>,
    /// Seed of `--generate-runs`: the same seed gives the same corpus.
    #[arg(long, default_value_t = 1, requires = "generate_runs")]
    pub seed: u64,
    /// Files replayed at once, each on its own scratch journal (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// `--jobs` when not given: the number of CPUs.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What to do with each fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Check,
    Bless,
    Print,
}

/// The result of one replayed item (a fixture, a history, a REPLAY.jsonl file).
#[derive(Clone, Debug, PartialEq)]
pub enum ItemStatus {
    Matched,
    Blessed,
    Printed(Value),
    /// A readable report of the first divergence.
    Diverged(String),
}

#[derive(Clone, Debug)]
pub struct ItemResult {
    pub name: String,
    pub events: usize,
    pub status: ItemStatus,
}

/// Runs `openagents-runtime replay`.
///
/// # Errors
/// When an input cannot be read or run, or (in check mode) any output diverges.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if args.journal {
        return journal_check::run(&args).await;
    }
    if args.inputs.is_empty() {
        bail!("name at least one fixture, REPLAY.jsonl file or directory (e.g. replay-fixtures/)");
    }
    let mode = if args.bless {
        Mode::Bless
    } else if args.print {
        Mode::Print
    } else {
        Mode::Check
    };
    let target = ScratchTarget::from_url(args.database_url.as_deref());
    let jobs = args.jobs.unwrap_or_else(default_jobs).max(1);
    if let Some(runs) = args.generate_runs {
        let [dir] = args.inputs.as_slice() else {
            bail!("--generate-runs writes into one directory: name exactly one");
        };
        let spec = generate::CorpusSpec::new(runs, args.seed);
        let written = write_corpus(dir, &spec, &target, jobs).await?;
        println!(
            "generated {} fixtures ({runs} runs, {} events) into {}",
            written.fixtures,
            written.events,
            dir.display()
        );
        return Ok(());
    }
    let files = expand_inputs(&args.inputs)?;
    let mut diverged = 0;
    let mut total = 0;
    for (file, results) in replay_files(&files, &target, mode, jobs).await? {
        for result in results {
            total += 1;
            match &result.status {
                ItemStatus::Matched => println!(
                    "ok       {} ({} events, {})",
                    result.name,
                    result.events,
                    target.backend_name()
                ),
                ItemStatus::Blessed => {
                    println!("blessed  {} ({} events)", result.name, result.events)
                }
                ItemStatus::Printed(value) => println!("{}", serde_json::to_string_pretty(value)?),
                ItemStatus::Diverged(report) => {
                    diverged += 1;
                    println!("DIVERGED {} ({})\n{report}", result.name, file.display());
                }
            }
        }
    }
    if diverged > 0 {
        bail!("{diverged} of {total} replayed items diverged");
    }
    Ok(())
}

/// Replays `files`, up to `jobs` at once (each on its own scratch journal), and returns their
/// results in file order.
///
/// # Errors
/// The first file that cannot be read or run (see [`replay_file`]).
pub async fn replay_files(
    files: &[PathBuf],
    target: &ScratchTarget,
    mode: Mode,
    jobs: usize,
) -> anyhow::Result<Vec<(PathBuf, Vec<ItemResult>)>> {
    let target = target.clone();
    on_job_threads(files.to_vec(), jobs, move |file| {
        let target = target.clone();
        async move {
            let results = replay_file(&file, &target, mode)
                .await
                .with_context(|| format!("replay {}", file.display()))?;
            Ok((file, results))
        }
    })
    .await
}

/// Runs `work` on every item, `jobs` items at a time, each job on a thread of its own with a
/// single-threaded runtime, and returns the results in item order, or the first error (no item
/// is started after one). A replay is a long chain of awaits on its scratch journal (the engine,
/// the journal's committer task, sqlx's connection thread): on one runtime thread per job its
/// tasks wake each other without crossing threads, where on the shared runtime every wake-up
/// could land on another worker. Everything a job creates (its scratch journal, its pools) lives
/// on its runtime and is dropped there.
///
/// # Errors
/// The first error `work` returns, or a job thread that could not start or panicked.
pub async fn on_job_threads<T, R, F, Fut>(
    items: Vec<T>,
    jobs: usize,
    work: F,
) -> anyhow::Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let total = items.len();
    let queue = Arc::new(Mutex::new(items.into_iter().enumerate()));
    let failed = Arc::new(AtomicBool::new(false));
    let work = Arc::new(work);
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..jobs.clamp(1, total.max(1)) {
        let (queue, failed, work, done) =
            (queue.clone(), failed.clone(), work.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("replay-job-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        let _ = done.send((
                            usize::MAX,
                            Err(anyhow::Error::from(e).context("start a replay job's runtime")),
                        ));
                        return;
                    }
                };
                while !failed.load(Ordering::Relaxed) {
                    let next = queue.lock().expect("job queue lock poisoned").next();
                    let Some((index, item)) = next else { break };
                    let result = runtime.block_on(work(item));
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if done.send((index, result)).is_err() {
                        break;
                    }
                }
            })
            .context("start a replay job thread")?;
    }
    drop(done);
    let mut out: Vec<Option<anyhow::Result<R>>> = (0..total).map(|_| None).collect();
    let mut first_error = None;
    while let Some((index, result)) = results.recv().await {
        match out.get_mut(index) {
            Some(slot) => *slot = Some(result),
            None => first_error = first_error.or(result.err()),
        }
    }
    let mut ordered = Vec::with_capacity(total);
    for slot in out {
        match slot {
            Some(Ok(result)) => ordered.push(result),
            Some(Err(e)) => return Err(e),
            // Not run: an error stopped the jobs, or a job thread panicked.
            None => {
                return Err(first_error.unwrap_or_else(|| anyhow::anyhow!("a replay job panicked")))
            }
        }
    }
    Ok(ordered)
}

/// What [`write_corpus`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenCorpus {
    pub fixtures: usize,
    pub runs: usize,
    pub events: usize,
}

/// Generates the corpus `spec` describes, produces every fixture's `expected` (up to `jobs` at
/// once) and writes each as `DIR/<name>.json`.
///
/// # Errors
/// When the directory cannot be written or a fixture cannot run.
pub async fn write_corpus(
    dir: &Path,
    spec: &generate::CorpusSpec,
    target: &ScratchTarget,
    jobs: usize,
) -> anyhow::Result<WrittenCorpus> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let fixtures = generate::generate(spec);
    let count = fixtures.len();
    let target = target.clone();
    let dir = dir.to_owned();
    let counts = on_job_threads(fixtures, jobs, move |mut fixture| {
        let target = target.clone();
        let path = dir.join(format!("{}.json", fixture.name));
        async move {
            let produced = produce(&fixture, &target).await?;
            fixture.expected = Some(produced.output);
            let mut text = serde_json::to_string_pretty(&fixture)?;
            text.push('\n');
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            anyhow::Ok(produced.event_count)
        }
    })
    .await?;
    let events = counts.into_iter().sum();
    Ok(WrittenCorpus {
        fixtures: count,
        runs: spec.runs,
        events,
    })
}

/// Files named directly, plus the `*.json`/`*.jsonl` files directly inside named directories
/// (sorted; JSON files that are neither fixtures nor history corpora are skipped there).
///
/// # Errors
/// When a path does not exist.
pub fn expand_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("read {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("json" | "jsonl")
                        )
                })
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()) == Some("jsonl")
                        || json_schema(p)
                            .is_some_and(|s| s == FIXTURE_SCHEMA || s == HISTORY_SCHEMA)
                })
                .collect();
            found.sort();
            out.extend(found);
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            bail!("{} does not exist", input.display());
        }
    }
    Ok(out)
}

fn json_schema(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    schema_of(&bytes)
}

/// A JSON document's `schema`: the rest of the document is skipped without being built.
fn schema_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        schema: Option<String>,
    }
    serde_json::from_slice::<Head>(bytes).ok()?.schema
}

/// Replays one file of any accepted kind.
///
/// # Errors
/// When the file cannot be read or is of no accepted kind, or a replay fails to run.
pub async fn replay_file(
    path: &Path,
    target: &ScratchTarget,
    mode: Mode,
) -> anyhow::Result<Vec<ItemResult>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("replay")
        .to_owned();
    let first_line = text.lines().next().unwrap_or_default();
    if first_line.contains("\"ReplayHeader\"") {
        return Ok(vec![replay_jsonl(&name, &text, target, mode).await?]);
    }
    // A fixture that is only checked or printed is read straight into its struct (its
    // `expected` stays a value); blessing keeps the whole document to rewrite it.
    if mode != Mode::Bless && schema_of(text.as_bytes()).as_deref() == Some(FIXTURE_SCHEMA) {
        let fixture: Fixture = serde_json::from_str(&text).context("not a valid replay fixture")?;
        drop(text);
        return Ok(vec![replay_fixture(fixture, None, target, mode).await?]);
    }
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    match value.get("schema").and_then(Value::as_str) {
        Some(FIXTURE_SCHEMA) => Ok(vec![replay_fixture_file(path, value, target, mode).await?]),
        Some(HISTORY_SCHEMA) => replay_histories(value, target, mode).await,
        other => bail!(
            "{} is neither a replay fixture ({FIXTURE_SCHEMA}), a history corpus ({HISTORY_SCHEMA}) nor REPLAY.jsonl (schema {other:?})",
            path.display()
        ),
    }
}

/// Runs a fixture on a fresh journal, projects it with every read model and returns all its
/// outputs.
///
/// # Errors
/// When the scratch journal cannot be created, the fixture cannot run or a projector fails.
pub async fn produce(
    fixture: &Fixture,
    target: &ScratchTarget,
) -> anyhow::Result<runner::FixtureRun> {
    let scratch = ScratchDb::create(target).await?;
    let result = async {
        let mut run = runner::run_fixture(fixture, scratch.database.journal()).await?;
        projection::add_outputs(&scratch.database, &mut run.output).await?;
        Ok(run)
    }
    .await;
    scratch.dispose().await;
    result
}

async fn replay_fixture_file(
    path: &Path,
    document: Value,
    target: &ScratchTarget,
    mode: Mode,
) -> anyhow::Result<ItemResult> {
    // Only blessing rewrites the document; otherwise it is consumed, not copied.
    if mode == Mode::Bless {
        let fixture: Fixture =
            serde_json::from_value(document.clone()).context("not a valid replay fixture")?;
        return replay_fixture(fixture, Some((path, document)), target, mode).await;
    }
    let fixture: Fixture =
        serde_json::from_value(document).context("not a valid replay fixture")?;
    replay_fixture(fixture, None, target, mode).await
}

/// Runs `fixture` and checks, prints or blesses what it produced; blessing writes `bless`'s
/// document with the new `expected` to its path.
async fn replay_fixture(
    fixture: Fixture,
    bless: Option<(&Path, Value)>,
    target: &ScratchTarget,
    mode: Mode,
) -> anyhow::Result<ItemResult> {
    let produced = produce(&fixture, target).await?;
    let status = match (mode, bless) {
        (Mode::Print, _) => ItemStatus::Printed(produced.output),
        (Mode::Bless, Some((path, mut document))) => {
            let object = document
                .as_object_mut()
                .ok_or_else(|| anyhow!("a fixture is a JSON object"))?;
            object.insert("expected".into(), produced.output);
            let mut text = serde_json::to_string_pretty(&document)?;
            text.push('\n');
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
            ItemStatus::Blessed
        }
        (Mode::Bless, None) => bail!("blessing needs the fixture's document"),
        (Mode::Check, _) => match &fixture.expected {
            None => {
                ItemStatus::Diverged("the fixture has no `expected` yet: run with --bless".into())
            }
            Some(expected) => match diff::first_divergence(expected, &produced.output) {
                None => ItemStatus::Matched,
                Some(d) => ItemStatus::Diverged(d.to_string()),
            },
        },
    };
    Ok(ItemResult {
        name: fixture.name,
        events: produced.event_count,
        status,
    })
}

fn fresh_engine(database: &engine::Database, clock: Arc<ManualClock>) -> Engine {
    Engine::new(
        database.journal(),
        Stamps {
            clock,
            ids: Arc::new(SequentialIds::default()),
        },
        Arc::new(JournalNotifier::new()),
        EngineConfig::default(),
    )
}

async fn replay_histories(
    value: Value,
    target: &ScratchTarget,
    mode: Mode,
) -> anyhow::Result<Vec<ItemResult>> {
    let corpus: HistoryCorpus =
        serde_json::from_value(value).context("not a valid history corpus")?;
    let mut results = Vec::new();
    for history in &corpus.fixtures {
        let scratch = ScratchDb::create(target).await?;
        let clock = Arc::new(ManualClock::new(history.created_at, 0));
        let engine = fresh_engine(&scratch.database, clock.clone());
        let outcome = reexecute_history(&engine, &clock, history).await;
        scratch.dispose().await;
        let status = match outcome {
            Err(e) => ItemStatus::Diverged(format!("re-execution failed: {e}")),
            Ok(outcome) => match mode {
                Mode::Print => ItemStatus::Printed(serde_json::json!({
                    "id": history.id,
                    "final_status": outcome.final_status,
                    "trajectory_hash": outcome.trajectory_hash,
                    "replay_hash": outcome.replay_hash,
                    "runtime_event_count": outcome.runtime_event_count,
                    "replay_jsonl": render_replay(&outcome.record),
                })),
                // The corpus is the original system's record: it is never rewritten.
                Mode::Check | Mode::Bless => {
                    let mismatches = outcome.mismatches(&history.expected);
                    if mismatches.is_empty() {
                        ItemStatus::Matched
                    } else {
                        ItemStatus::Diverged(
                            mismatches
                                .iter()
                                .map(|(field, e, a)| format!("{field}: expected {e}, got {a}"))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        )
                    }
                }
            },
        };
        results.push(ItemResult {
            name: history.id.clone(),
            events: history.events.len() + 1,
            status,
        });
    }
    Ok(results)
}

async fn replay_jsonl(
    name: &str,
    text: &str,
    target: &ScratchTarget,
    mode: Mode,
) -> anyhow::Result<ItemResult> {
    let parsed = parse_replay(text)?;
    let mut metadata = Map::new();
    metadata.insert(
        "policy_bundle_id".into(),
        Value::String(parsed.policy_bundle_id.clone()),
    );
    let steps: Vec<StreamStep<'_>> = parsed
        .events
        .iter()
        .map(|e| StreamStep {
            seq: e.seq,
            event_type: &e.runtime_event_type,
            payload: &e.payload,
            idempotency_key: None,
            recorded_at: e.ts,
        })
        .collect();
    let scratch = ScratchDb::create(target).await?;
    let clock = Arc::new(ManualClock::new(parsed.created_at, 0));
    let engine = fresh_engine(&scratch.database, clock.clone());
    let outcome = reexecute_stream(
        &engine,
        &clock,
        &parsed.session_id,
        parsed.created_at,
        &metadata,
        &steps,
    )
    .await;
    scratch.dispose().await;
    let status = match outcome {
        Err(e) => ItemStatus::Diverged(format!("re-execution failed: {e}")),
        Ok(outcome) => {
            let regenerated = render_replay(&outcome.record);
            match mode {
                Mode::Print => ItemStatus::Printed(Value::String(regenerated)),
                Mode::Check | Mode::Bless => match diff::first_line_divergence(text, &regenerated) {
                    None => ItemStatus::Matched,
                    Some((line, expected, actual)) => ItemStatus::Diverged(format!(
                        "first divergence at line {line} (input {}, regenerated {})\n  expected: {}\n  actual:   {}",
                        sha256_prefixed(text.as_bytes()),
                        sha256_prefixed(regenerated.as_bytes()),
                        expected.as_deref().unwrap_or("(nothing)").trim_end(),
                        actual.as_deref().unwrap_or("(nothing)").trim_end()
                    )),
                },
            }
        }
    };
    Ok(ItemResult {
        name: name.to_owned(),
        events: parsed.events.len() + 1,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::on_job_threads;

    #[tokio::test]
    async fn job_threads_return_results_in_item_order() {
        // Later items finish first: the order is the items', not the finishing order.
        let got = on_job_threads((0..20u64).collect(), 3, |n| async move {
            tokio::time::sleep(std::time::Duration::from_millis(20 - n)).await;
            anyhow::Ok(n * 10)
        })
        .await
        .unwrap();
        assert_eq!(got, (0..20).map(|n| n * 10).collect::<Vec<_>>());
    }

    /// One job, so the items run in order and exactly four start.
    #[tokio::test]
    async fn a_failing_item_is_returned_and_stops_new_items() {
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = started.clone();
        let error = on_job_threads((0..1000u32).collect(), 1, move |n| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if n == 3 {
                    anyhow::bail!("item {n} failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                Ok(n)
            }
        })
        .await
        .unwrap_err();
        assert_eq!(error.to_string(), "item 3 failed");
        let started = started.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(started, 4, "items started");
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_hang() {
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            on_job_threads(vec![1, 2, 3], 2, |n: i32| async move {
                assert_ne!(n, 2, "job panics on item 2");
                anyhow::Ok(n)
            }),
        )
        .await
        .expect("returns");
        assert!(result.is_err());
    }
}

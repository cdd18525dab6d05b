//! `bench replay`: fixture replay rate on a journal backend, beside a raw baseline measured in the
//! same run (the same number of events appended straight to the journal, one append per event,
//! without the engine).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use engine::journal::{AppendRequest, EventMetadata, NewEvent};
use engine::Journal;
use serde_json::json;

use openagents_runtime::replay::fixture::Fixture;
use openagents_runtime::replay::scratch::{ScratchDb, ScratchTarget};
use openagents_runtime::replay::{expand_inputs, runner};

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
}

/// Runs the benchmark and prints the rates and their ratio.
///
/// # Errors
/// When a fixture cannot be read or run.
pub async fn run(args: BenchReplayArgs) -> anyhow::Result<()> {
    let target = ScratchTarget::from_url(args.database_url.as_deref());
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
    let scratch = ScratchDb::create(&target).await?;
    let journal = scratch.database.journal();
    let mut metadata = EventMetadata::new();
    metadata.insert("recorded_at".into(), "2026-02-01T00:00:00Z".into());
    let started = Instant::now();
    for i in 0..replay_events {
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
    let raw_secs = started.elapsed().as_secs_f64();
    scratch.dispose().await;
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

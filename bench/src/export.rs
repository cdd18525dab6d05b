//! `bench export`: audit export rate for a large journal beside a raw baseline from the same run:
//! a plain PostgreSQL `COPY (SELECT … ORDER BY transaction_id, position) TO STDOUT` of the same
//! rows into a file. The two take turns for `--rounds` rounds and each is reported by its best and
//! median round, with this process's CPU per event (PostgreSQL's own CPU is not in it). Also times
//! the recomputing export and `audit verify` on the bundle.
//!
//! The journal is seeded in a fresh scratch database with `COPY FROM STDIN` of realistic run
//! streams (created, started, text/tool frames, finished), each event carrying the chain metadata
//! the engine writes.

use std::path::PathBuf;
use std::time::Instant;

use aggregates::chain::{self, EventContent};
use aggregates::ids::{FrameId, Owner, RunId, ThreadId, UserId};
use aggregates::run::{frame_payload_hash, RunEvent, RunStatus};
use aggregates::Timestamp;
use anyhow::{bail, Context};
use cqrs_es::DomainEvent;
use engine::Database;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgPoolCopyExt;
use tokio::io::AsyncWriteExt;

use openagents_runtime::audit::export::{export, ExportOptions};
use openagents_runtime::audit::verify::{verify_bundle, VerifyOptions};
use openagents_runtime::audit::{Scope, RUNTIME_VERSION};
use openagents_runtime::replay::scratch::{ScratchDb, ScratchTarget};

/// `openagents-bench export`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchExportArgs {
    /// PostgreSQL server on which a scratch database is created (the role needs CREATEDB).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Events to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per run (at least 4).
    #[arg(long, default_value_t = 20)]
    pub events_per_run: u64,
    /// Directory for the COPY file and the bundle (default: a temporary directory).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Keep the seeded scratch database (its name is printed) for profiling `audit export`.
    #[arg(long)]
    pub keep: bool,
    /// Rounds of baseline and export, taking turns (each reported by its best and median round).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

fn copy_escape(text: &str, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            other => out.push(other),
        }
    }
}

fn run_events(run: u64, per_run: u64, start: Timestamp) -> Vec<RunEvent> {
    let at = |i: u64| start.plus_millis(run * 1_000 + i * 10);
    let mut events = vec![
        RunEvent::RunCreated {
            run_id: RunId::parse(format!("bench-run-{run}")).expect("valid id"),
            thread_id: ThreadId::parse(format!("bench-thread-{run}")).expect("valid id"),
            owner: Owner::User(UserId::parse("bench").expect("valid id")),
            metadata: json!({"policy_bundle_id": "policy.bench"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            org_id: None,
            created_at: at(0),
        },
        RunEvent::RunStarted {
            source: "runtime".into(),
            started_at: at(1),
        },
    ];
    for i in 2..per_run - 1 {
        let (frame_type, payload) = match i % 3 {
            0 => (
                "tool_call",
                json!({"tool_call_id": format!("c{i}"), "name": "shell", "arguments": {"cmd": "ls -la", "i": i}}),
            ),
            1 => (
                "tool_result",
                json!({"tool_call_id": format!("c{}", i - 1), "output": "README.md\nsrc\nCargo.toml\n"}),
            ),
            _ => (
                "text_delta",
                json!({"delta": "Streaming a reasonably sized chunk of model output text."}),
            ),
        };
        let payload: Map<String, Value> = payload.as_object().cloned().unwrap_or_default();
        events.push(RunEvent::FrameAppended {
            frame_id: FrameId::parse(format!("f{i}")).expect("valid id"),
            frame_type: frame_type.into(),
            payload_hash: frame_payload_hash(frame_type, &payload),
            payload,
            occurred_at: None,
            appended_at: at(i),
        });
    }
    events.push(RunEvent::RunFinished {
        status: RunStatus::Succeeded,
        reason_class: None,
        reason: None,
        error_code: None,
        finished_at: at(per_run),
    });
    events
}

/// Seeds `events` chained run events into `database` with COPY.
async fn seed(database: &Database, events: u64, per_run: u64) -> anyhow::Result<u64> {
    let Database::Postgres(pool) = database else {
        bail!("bench export needs PostgreSQL")
    };
    let mut copy = pool
        .copy_in_raw("COPY events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) FROM STDIN")
        .await?;
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().expect("valid literal");
    let mut buffer = Vec::with_capacity(8 << 20);
    let mut written = 0;
    let mut run = 0;
    while written < events {
        let id = format!("bench-run-{run}");
        let mut prev: Option<String> = None;
        for (i, event) in run_events(run, per_run, start).into_iter().enumerate() {
            if written == events {
                break;
            }
            let sequence = i as u64 + 1;
            let payload = serde_json::to_value(&event)?;
            let mut metadata = Map::new();
            metadata.insert("actor".into(), json!("user:bench"));
            metadata.insert("recorded_at".into(), json!(event.at().to_rfc3339()));
            let metadata_value = Value::Object(metadata.clone());
            let (content, link) = chain::link(
                prev.as_deref(),
                &EventContent {
                    aggregate_type: "run",
                    aggregate_id: &id,
                    sequence,
                    event_type: &event.event_type(),
                    event_version: &event.event_version(),
                    payload: &payload,
                    metadata: &metadata_value,
                },
            );
            metadata.insert(chain::CHAIN_HASH_KEY.into(), json!(link));
            metadata.insert(chain::CONTENT_HASH_KEY.into(), json!(content));
            let mut sorted: Vec<_> = metadata.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            let metadata: Map<String, Value> = sorted.into_iter().collect();
            prev = Some(link);
            buffer.extend_from_slice(b"run\t");
            copy_escape(&id, &mut buffer);
            buffer.extend_from_slice(
                format!(
                    "\t{sequence}\t{}\t{}\t",
                    event.event_type(),
                    event.event_version()
                )
                .as_bytes(),
            );
            copy_escape(&payload.to_string(), &mut buffer);
            buffer.push(b'\t');
            copy_escape(&Value::Object(metadata).to_string(), &mut buffer);
            buffer.push(b'\n');
            written += 1;
        }
        run += 1;
        if buffer.len() > (4 << 20) {
            copy.send(std::mem::take(&mut buffer)).await?;
            buffer.reserve(8 << 20);
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer).await?;
    }
    copy.finish().await?;
    sqlx::query("ANALYZE events").execute(pool).await?;
    Ok(written)
}

/// Wall and CPU time of one phase.
struct Phase {
    secs: f64,
    /// User + system CPU of this process (not of PostgreSQL) during the phase.
    cpu_secs: f64,
}

/// This process's user + system CPU time so far (from `/proc/self/stat`; 0 where there is none).
fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime are
    // the 12th and 13th, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn timed<F, Fut>(run: F) -> anyhow::Result<(Phase, u64)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let (cpu, started) = (process_cpu_secs(), Instant::now());
    let bytes = run().await?;
    let phase = Phase {
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: process_cpu_secs() - cpu,
    };
    Ok((phase, bytes))
}

/// The baseline: `COPY` the rows, in commit order, into a file. Returns the bytes written.
async fn copy_out(pool: &sqlx::PgPool, path: &std::path::Path) -> anyhow::Result<u64> {
    let mut stream = pool
        .copy_out_raw(
            "COPY (SELECT transaction_id, position, aggregate_type, aggregate_id, sequence, event_type, \
                          event_version, payload, metadata FROM events ORDER BY transaction_id, position) TO STDOUT",
        )
        .await?;
    let mut file =
        tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(path).await?);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(bytes)
}

/// `audit export --all` (integrity only, as the baseline has no tree either) into a file.
/// Returns the bundle's bytes.
async fn export_to(
    database: &Database,
    path: &std::path::Path,
    verify_stored: bool,
    events: u64,
) -> anyhow::Result<u64> {
    let options = ExportOptions {
        scope: Scope::All,
        signer: None,
        runtime_version: RUNTIME_VERSION.to_owned(),
        exported_at: Timestamp::from_datetime(chrono::Utc::now()),
        progress: false,
        verify_stored,
        cut: openagents_runtime::audit::export::Cut::IntegrityOnly,
        consistency_from: None,
    };
    let file = tokio::fs::File::create(path).await?;
    let summary = export(
        database,
        &options,
        tokio::io::BufWriter::with_capacity(1 << 20, file),
    )
    .await?;
    if summary.events != events {
        bail!("exported {} of {events} events", summary.events);
    }
    Ok(summary.bytes)
}

/// Runs the benchmark and prints rates and ratios.
///
/// # Errors
/// When the server cannot be used.
pub async fn run(args: BenchExportArgs) -> anyhow::Result<()> {
    if args.events_per_run < 4 {
        bail!("--events-per-run must be at least 4");
    }
    let tmp = tempfile::tempdir()?;
    let dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let scratch = ScratchDb::create(&ScratchTarget::Postgres {
        url: args.database_url.clone(),
    })
    .await?;
    let result = bench(&scratch.database, &args, &dir).await;
    if args.keep {
        println!(
            "kept scratch database {}",
            scratch.name().unwrap_or_default()
        );
        scratch.database.close().await;
    } else {
        scratch.dispose().await;
    }
    result
}

async fn bench(
    database: &Database,
    args: &BenchExportArgs,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let events = seed(database, args.events, args.events_per_run).await?;
    println!(
        "seeded {events} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let Database::Postgres(pool) = database else {
        bail!("bench export needs PostgreSQL")
    };

    // Baseline and export take turns, `--rounds` times: on a shared machine one run of either can
    // land on a busy moment, so each is reported by its best round (and the median) beside the
    // other's, all from this one process and these same rows.
    let copy_path = dir.join("events.copy");
    let bundle_path = dir.join("bundle.jsonl");
    let mut copies: Vec<Phase> = Vec::new();
    let mut exports: Vec<Phase> = Vec::new();
    let mut copy_bytes = 0u64;
    let mut bundle_bytes = 0u64;
    for _ in 0..args.rounds.max(1) {
        let (phase, bytes) = timed(|| copy_out(pool, &copy_path)).await?;
        copies.push(phase);
        copy_bytes = bytes;
        let (phase, bytes) = timed(|| export_to(database, &bundle_path, false, events)).await?;
        exports.push(phase);
        bundle_bytes = bytes;
    }
    let (verifying, _) = timed(|| export_to(database, &bundle_path, true, events)).await?;
    let started = Instant::now();
    let path = bundle_path.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::open(&path)?;
        Ok(verify_bundle(
            std::io::BufReader::with_capacity(1 << 20, file),
            &VerifyOptions::integrity_only(),
        )?)
    })
    .await
    .context("verify task")??;
    let verify_secs = started.elapsed().as_secs_f64();
    if !report.is_valid() {
        bail!(
            "the benchmark bundle does not verify: {:?}",
            report.findings.first()
        );
    }

    let rate = |secs: f64| events as f64 / secs.max(1e-9);
    let best = |phases: &[Phase]| phases.iter().map(|p| p.secs).fold(f64::INFINITY, f64::min);
    let median = |phases: &[Phase]| {
        let mut secs: Vec<f64> = phases.iter().map(|p| p.secs).collect();
        secs.sort_by(f64::total_cmp);
        secs[secs.len() / 2]
    };
    let cpu_us = |phases: &[Phase]| {
        phases.iter().map(|p| p.cpu_secs).sum::<f64>() * 1e6 / (phases.len() as f64 * events as f64)
    };
    println!(
        "events: {events} ({} per run), {} rounds",
        args.events_per_run,
        copies.len()
    );
    println!(
        "COPY to file:           {:>9.0} events/s best, {:>9.0} median  ({:.2}s best, {} MB; this process {:.2} µs CPU/event)",
        rate(best(&copies)),
        rate(median(&copies)),
        best(&copies),
        copy_bytes >> 20,
        cpu_us(&copies)
    );
    println!(
        "audit export --no-verify: {:>9.0} events/s best, {:>9.0} median  ({:.2}s best, {} MB; this process {:.2} µs CPU/event)  ratio to COPY {:.2} best/best, {:.2} median/median",
        rate(best(&exports)),
        rate(median(&exports)),
        best(&exports),
        bundle_bytes >> 20,
        cpu_us(&exports),
        best(&copies) / best(&exports),
        median(&copies) / median(&exports)
    );
    println!(
        "audit export (verify):  {:>9.0} events/s  ({:.2}s; this process {:.2} µs CPU/event)  ratio to COPY's best {:.2}",
        rate(verifying.secs),
        verifying.secs,
        cpu_us(std::slice::from_ref(&verifying)),
        best(&copies) / verifying.secs
    );
    println!(
        "audit verify:          {:>9.0} events/s  ({verify_secs:.2}s)",
        rate(verify_secs)
    );
    Ok(())
}

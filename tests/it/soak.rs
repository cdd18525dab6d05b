//! Soak: a real `serve` child on PostgreSQL under steady command load for minutes (the load the
//! trust-boundary issue measured: many writers on short runs — create, start, 100 frames,
//! finish — each on a fresh run id), sampling the child's resident memory. Memory must level
//! off: every in-memory structure is bounded (the aggregate cache by bytes, set small here so
//! its bound is reached within the test; idempotency records, nonces and metric labels by
//! schedule or by construction), so the last third of the run holds no more than the middle
//! third plus a small allowance for allocator noise.
//!
//! `OA_SOAK_SECS` sets the load's duration (default 150 s; the samples are printed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::{claims, token};
use crate::child::ServeChild;

const WRITERS: usize = 16;
const FRAMES_PER_RUN: usize = 100;
/// Pause between one writer's commands: a steady offered load, not a throughput race (the
/// rest of the suite shares the machine).
const PACE: Duration = Duration::from_millis(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const CACHE_BYTES: &str = "1048576";
/// What allocator noise may add between the middle and the last third.
const ALLOWANCE_BYTES: u64 = 6 * 1024 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn command(http: &reqwest::Client, base: &str, path: &str, body: serde_json::Value) -> bool {
    let response = http
        .post(format!("{base}{path}"))
        .header("x-oa-runtime-signature", token(&claims()))
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    matches!(response, Ok(r) if r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_memory_levels_off_under_steady_load() {
    let Some(db) = engine::testing::TestDb::postgres().await else {
        return;
    };
    let seconds: u64 = std::env::var("OA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let data_dir = tempfile::tempdir().unwrap();
    let child = ServeChild::start(
        &db,
        data_dir.path(),
        &["--aggregate-cache-bytes", CACHE_BYTES],
    );
    let pid = child.pid();
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (commands, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (http, base, stop) = (http.clone(), child.base.clone(), stop.clone());
        let (commands, failures) = (commands.clone(), failures.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let run = format!("soak_{writer}_{n}");
                n += 1;
                let thread = json!({"thread_id": "soak"});
                let mut steps = vec![
                    (
                        "/internal/v1/runs".to_owned(),
                        json!({"run_id": run, "thread_id": "soak"}),
                    ),
                    (format!("/internal/v1/runs/{run}/start"), thread.clone()),
                ];
                for f in 0..FRAMES_PER_RUN {
                    steps.push((
                        format!("/internal/v1/runs/{run}/frames"),
                        json!({"thread_id": "soak", "frame_id": format!("f{f}"),
                               "type": "text_delta", "payload": {"delta": "tick"}}),
                    ));
                }
                steps.push((
                    format!("/internal/v1/runs/{run}/finish"),
                    json!({"thread_id": "soak", "status": "succeeded"}),
                ));
                for (path, body) in steps {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if command(&http, &base, &path, body).await {
                        commands.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(PACE).await;
                }
            }
        }));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(SAMPLE_EVERY).await;
        samples.push((started.elapsed().as_secs(), rss_bytes(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let (commands, failures) = (
        commands.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let trace: Vec<String> = samples
        .iter()
        .map(|(t, b)| format!("{t}s:{:.1}", mib(*b)))
        .collect();
    eprintln!(
        "soak: {commands} commands ({failures} failed) in {seconds} s; RSS MiB {}",
        trace.join(" ")
    );
    assert_eq!(failures, 0, "every command of the steady load succeeds");
    assert!(commands > 2_000, "the load ran ({commands} commands)");
    let third = samples.len() / 3;
    assert!(third >= 3, "enough samples: {}", samples.len());
    let peak = |range: &[(u64, u64)]| range.iter().map(|(_, b)| *b).max().unwrap();
    let middle = peak(&samples[third..2 * third]);
    let last = peak(&samples[2 * third..]);
    assert!(
        last <= middle + middle / 10 + ALLOWANCE_BYTES,
        "RSS still climbing: middle third peaked at {:.1} MiB, last third at {:.1} MiB ({})",
        mib(middle),
        mib(last),
        trace.join(" ")
    );
    drop(child);
    db.cleanup().await;
}

//! The bench binary works: every benchmark has help, and `openagents-bench fanout` runs over the
//! real pipeline at a tiny size: the bench starts its `serve` child (the runtime's command line
//! from the same library), commits frames over HTTP, and every client receives every commit
//! exactly once, beside the raw baseline; then a replay seeded through the pipeline. Speed is
//! not asserted here (benchmarks measure it, see docs/BENCHMARKS.md); this keeps the bench
//! working.

use std::process::Command;

#[test]
fn bench_fanout_delivers_every_commit_through_the_real_pipeline() {
    let output = Command::new(env!("CARGO_BIN_EXE_openagents-bench"))
        .arg("fanout")
        .args(["--connections", "20"])
        .args(["--rate", "20"])
        .args(["--duration", "1s"])
        .args(["--runs", "4"])
        .args(["--replay-rows", "300"])
        .args(["--seed-concurrency", "4"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("source: REAL PIPELINE"), "{stdout}");
    // 20 commits (rounded up to whole rounds over 4 runs) to 20 clients, through Khala and the
    // raw baseline alike.
    assert!(
        stdout.contains("khala: 400/400 delivered"),
        "Khala must deliver every commit to every client: {stdout}"
    );
    assert!(stdout.contains("raw:   400/400 delivered"), "{stdout}");
    assert!(
        stdout.contains("duplicates 0, foreign 0"),
        "no update twice and none unexpected: {stdout}"
    );
    // The serve child's stage timings cover the run: the stamps cross from the projector to
    // the tailer and from the tailer to the sockets.
    for stage in [
        "projector batch (read + fold + commit)",
        "store commit -> tailer holds the rows",
        "tailer -> flushed to the socket*",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("no stage line {stage:?}: {stdout}"));
        let count: f64 = line[line.find(stage).unwrap() + stage.len()..]
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line:?}"));
        assert!(count > 0.0, "stage {stage:?} recorded nothing: {stdout}");
    }
    let replay = stdout
        .lines()
        .find(|l| l.starts_with("replay catch-up"))
        .unwrap_or_else(|| panic!("no replay line: {stdout}"));
    // 300 rows: four seed runs created and started, and 292 frames.
    assert!(replay.contains("300 rows"), "{replay}");
    assert!(replay.contains("raw baseline"), "{replay}");
}

#[test]
fn every_benchmark_has_help_and_the_runtime_command_line_is_inside() {
    for args in [
        vec!["--help"],
        vec!["append", "--help"],
        vec!["http", "--help"],
        vec!["checkpoint", "--help"],
        vec!["project", "--help"],
        vec!["export", "--help"],
        vec!["replay", "--help"],
        vec!["fanout", "--help"],
        vec!["store-replay", "--help"],
        vec!["runtime", "serve", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_openagents-bench"))
            .args(&args)
            .output()
            .expect("run the bench binary");
        assert!(output.status.success(), "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_openagents-bench"))
        .arg("no-such-bench")
        .output()
        .expect("run the bench binary");
    assert!(!output.status.success());
}

//! Deterministic replay: every fixture in `replay-fixtures/` (and the REPLAY.jsonl files and the
//! original runtime's histories) replays on both backends to exactly its expected outputs, read
//! models and sync stream included; a divergence is reported at its first differing place;
//! `--bless` rewrites expectations; the `--journal` drift check finds journal rows and read-model
//! rows edited behind the engine's back, and compares a lagging projector at its own checkpoint.

use std::path::{Path, PathBuf};

use aggregates::canonical::hash_canonical;
use engine::testing::{admin_url, in_ci, TestDb};
use openagents_runtime::replay::fixture::Fixture;
use openagents_runtime::replay::journal_check::{check_journal, DriftReport};
use openagents_runtime::replay::projection;
use openagents_runtime::replay::{
    expand_inputs, produce, replay_file, run, ItemStatus, Mode, ReplayArgs, ScratchDb,
    ScratchTarget,
};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("replay-fixtures")
}

fn all_inputs() -> Vec<PathBuf> {
    let mut files = expand_inputs(&[fixtures_dir()]).unwrap();
    files.push(fixtures_dir().join("compat/run_workflow_histories_v1.json"));
    files
}

/// PostgreSQL as a scratch target, or `None` (skip) when it is unreachable outside CI.
async fn postgres_target() -> Option<ScratchTarget> {
    let db = TestDb::postgres().await?;
    db.cleanup().await;
    Some(ScratchTarget::Postgres { url: admin_url() })
}

async fn replay_everything(target: &ScratchTarget) {
    let inputs = all_inputs();
    let fixtures = inputs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .count();
    assert!(
        fixtures >= 13,
        "expected at least a dozen fixtures, found {fixtures}"
    );
    let mut items = 0;
    for path in &inputs {
        for result in replay_file(path, target, Mode::Check).await.unwrap() {
            items += 1;
            assert_eq!(
                result.status,
                ItemStatus::Matched,
                "{} ({}) on {}",
                result.name,
                path.display(),
                target.backend_name()
            );
        }
    }
    assert!(items >= 18, "{items}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_replays_to_its_expected_outputs_on_the_embedded_journal() {
    replay_everything(&ScratchTarget::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_replays_to_its_expected_outputs_on_postgres() {
    let Some(target) = postgres_target().await else {
        return;
    };
    replay_everything(&target).await;
}

fn load(name: &str) -> (Value, Fixture) {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    (value.clone(), serde_json::from_value(value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_and_both_backends_give_byte_identical_outputs() {
    let postgres = postgres_target().await;
    // Conflicting appends from two engines; runs and workers interleaved (every topic but
    // payments gets rows).
    for name in [
        "run_conflicting_appends.json",
        "interleaved_runs_of_several_workers.json",
    ] {
        let (_, fixture) = load(name);
        let mut outputs = Vec::new();
        for target in std::iter::repeat_n(ScratchTarget::Embedded, 2).chain(
            postgres
                .iter()
                .flat_map(|t| std::iter::repeat_n(t.clone(), 2)),
        ) {
            let output = produce(&fixture, &target).await.unwrap().output;
            assert!(output["sync_stream"]["runtime.run_summaries"]
                .as_array()
                .is_some_and(|rows| !rows.is_empty()));
            outputs.push(serde_json::to_string(&output).unwrap());
        }
        assert!(outputs.len() >= 2);
        assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{name}");
    }
}

/// The blessed read models and sync streams are what the projectors must produce: per topic,
/// watermarks 1..N without gaps, each document's versions 1..k in stream order, the current
/// document at its last version with that row's hash, hashes that are the canonical hash of the
/// payload, and summaries that agree with the engine's own reports of the same runs and workers.
#[test]
fn the_blessed_read_models_and_sync_streams_are_consistent_with_the_runs_and_workers() {
    let mut checked = 0;
    for path in expand_inputs(&[fixtures_dir()]).unwrap() {
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.display().to_string();
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let expected = &value["expected"];
        let streams = expected["sync_stream"].as_object().expect(&name);
        let models = expected["read_models"].as_object().expect(&name);
        let topics = [
            "runtime.codex_worker_events",
            "runtime.codex_worker_summaries",
            "runtime.payments",
            "runtime.run_events",
            "runtime.run_metadata",
            "runtime.run_summaries",
        ];
        assert_eq!(streams.keys().collect::<Vec<_>>(), topics, "{name}");
        assert_eq!(models.keys().collect::<Vec<_>>(), topics, "{name}");
        for topic in topics {
            let rows = streams[topic].as_array().unwrap();
            let docs = models[topic].as_object().unwrap();
            let mut last: std::collections::BTreeMap<&str, (u64, &str)> = Default::default();
            for (i, row) in rows.iter().enumerate() {
                assert_eq!(row[0], topic, "{name}");
                assert_eq!(
                    row[1].as_u64(),
                    Some(i as u64 + 1),
                    "{name} {topic} gapless"
                );
                let key = row[2].as_str().unwrap();
                let version = row[3].as_u64().unwrap();
                let before = last.get(key).map_or(0, |(v, _)| *v);
                assert_eq!(version, before + 1, "{name} {topic} {key}");
                last.insert(key, (version, row[4].as_str().unwrap()));
            }
            assert_eq!(
                docs.keys().map(String::as_str).collect::<Vec<_>>(),
                last.keys().copied().collect::<Vec<_>>(),
                "{name} {topic}: a document per changed key"
            );
            for (key, doc) in docs {
                let (version, hash) = last[key.as_str()];
                assert_eq!(doc["doc_version"].as_u64(), Some(version), "{name} {key}");
                assert_eq!(doc["payload_hash"], hash, "{name} {key}");
                assert_eq!(
                    doc["payload_hash"],
                    hash_canonical(&doc["payload"]),
                    "{name} {key}"
                );
            }
        }
        for (run_id, run) in expected["runs"].as_object().unwrap() {
            let doc = &models["runtime.run_summaries"][format!("runtime/run_summary:{run_id}")];
            if run.get("error").is_some() {
                assert!(doc.is_null(), "{name} {run_id}");
                continue;
            }
            let payload = &doc["payload"];
            assert_eq!(payload["status"], run["status"], "{name} {run_id}");
            assert_eq!(
                payload["receipt"]["canonical_json_sha256"], run["recorded_receipt_sha256"],
                "{name} {run_id}"
            );
            checked += 1;
        }
        for (worker_id, worker) in expected["workers"].as_object().unwrap() {
            let doc = &models["runtime.codex_worker_summaries"]
                [format!("runtime/codex_worker_summary:{worker_id}")];
            assert_eq!(
                doc["payload"]["status"], worker["status"],
                "{name} {worker_id}"
            );
            assert_eq!(
                doc["payload"]["latest_seq"], worker["latest_seq"],
                "{name} {worker_id}"
            );
            checked += 1;
        }
    }
    // 14 runs and 5 workers across the fixtures.
    assert!(checked >= 19, "{checked}");
}

#[tokio::test]
async fn a_changed_expectation_is_reported_at_its_first_divergence_and_fails_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (mut value, _) = load("run_cancel.json");
    value["expected"]["events"][2]["payload"]["FrameAppended"]["payload"]["delta"] =
        Value::from("edited");
    let path = dir.path().join("edited.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let results = replay_file(&path, &ScratchTarget::Embedded, Mode::Check)
        .await
        .unwrap();
    let ItemStatus::Diverged(report) = &results[0].status else {
        panic!("{:?}", results[0].status)
    };
    assert!(
        report.contains("$.events[2].payload.FrameAppended.payload.delta"),
        "{report}"
    );
    assert!(
        report.contains("\"edited\"") && report.contains("\"working\""),
        "{report}"
    );

    let args = ReplayArgs {
        inputs: vec![path],
        check: true,
        bless: false,
        print: false,
        database_url: None,
        journal: false,
        data_dir: dir.path().to_owned(),
        scratch_database_url: None,
        generate_runs: None,
        seed: 1,
        jobs: None,
    };
    assert!(
        run(args).await.is_err(),
        "a divergence must make the command fail"
    );
}

#[tokio::test]
async fn bless_writes_the_expectations_that_check_then_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut value, _) = load("run_failure.json");
    let original = value["expected"].clone();
    value.as_object_mut().unwrap().remove("expected");
    let path = dir.path().join("fresh.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let unblessed = replay_file(&path, &ScratchTarget::Embedded, Mode::Check)
        .await
        .unwrap();
    assert!(matches!(&unblessed[0].status, ItemStatus::Diverged(r) if r.contains("--bless")));
    replay_file(&path, &ScratchTarget::Embedded, Mode::Bless)
        .await
        .unwrap();
    let blessed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(blessed["expected"], original);
    let checked = replay_file(&path, &ScratchTarget::Embedded, Mode::Check)
        .await
        .unwrap();
    assert_eq!(checked[0].status, ItemStatus::Matched);
}

#[tokio::test]
async fn an_edited_replay_file_is_reported_at_its_first_differing_line() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(fixtures_dir().join("run_with_tool_calls.replay.jsonl")).unwrap();
    let path = dir.path().join("edited.replay.jsonl");
    std::fs::write(
        &path,
        text.replace("\"total_tool_calls\":1", "\"total_tool_calls\":2"),
    )
    .unwrap();
    let results = replay_file(&path, &ScratchTarget::Embedded, Mode::Check)
        .await
        .unwrap();
    let ItemStatus::Diverged(report) = &results[0].status else {
        panic!()
    };
    assert!(report.contains("first divergence at line 9"), "{report}");
}

async fn drift_check_on(live: &TestDb) {
    let (_, fixture) = load("interleaved_runs_of_several_workers.json");
    openagents_runtime::replay::runner::run_fixture(&fixture, live.database.journal())
        .await
        .unwrap();
    let scratch = ScratchDb::create(&ScratchTarget::Embedded).await.unwrap();
    let report = check_journal(&live.database, &scratch.database)
        .await
        .unwrap();
    scratch.dispose().await;
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(
        (report.events, report.runs, report.receipts_compared),
        (32, 4, 4)
    );
    // Never projected: said once, instead of every document reported missing.
    assert_eq!(report.read_models_compared, 0);
    assert_eq!(
        report.notes,
        vec![
            "the live database has never been projected (no projector checkpoints): read models \
             not compared"
                .to_owned()
        ]
    );

    // Edit one stored payload behind the engine's back.
    let sql =
        "UPDATE events SET payload = replace(payload::text, 'b says hi', 'b says bye')::json \
               WHERE aggregate_id = 'run-b' AND sequence = 3";
    match &live.database {
        engine::Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        engine::Database::Sqlite { pool, .. } => sqlx::query(
            &sql.replace("payload::text", "payload")
                .replace(")::json", ")"),
        )
        .execute(pool)
        .await
        .map(|_| ()),
    }
    .unwrap();
    let scratch = ScratchDb::create(&ScratchTarget::Embedded).await.unwrap();
    let report = check_journal(&live.database, &scratch.database)
        .await
        .unwrap();
    scratch.dispose().await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("run/run-b#3") && p.contains("content_hash")),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("run/run-b: recorded receipt")),
        "{:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_drift_check_finds_rows_edited_behind_the_engine_on_sqlite() {
    let db = TestDb::sqlite().await;
    drift_check_on(&db).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_drift_check_finds_rows_edited_behind_the_engine_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        assert!(!in_ci());
        return;
    };
    drift_check_on(&db).await;
    db.cleanup().await;
}

async fn check(live: &TestDb) -> DriftReport {
    let scratch = ScratchDb::create(&ScratchTarget::Embedded).await.unwrap();
    let report = check_journal(&live.database, &scratch.database).await;
    scratch.dispose().await;
    report.unwrap()
}

/// Documents the fixture's expectation holds, over every read model.
fn expected_docs(name: &str) -> u64 {
    let (value, _) = load(name);
    value["expected"]["read_models"]
        .as_object()
        .unwrap()
        .values()
        .map(|docs| docs.as_object().unwrap().len() as u64)
        .sum()
}

async fn execute(live: &TestDb, sql: &str) {
    match &live.database {
        engine::Database::Postgres(pool) => sqlx::query(&sql.replace("{runtime}", "runtime."))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        engine::Database::Sqlite { pool, .. } => sqlx::query(&sql.replace("{runtime}", "runtime_"))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
    .map(|rows| assert_eq!(rows, 1, "{sql}"))
    .unwrap();
}

async fn read_model_drift_on(live: &TestDb) {
    let (_, fixture) = load("interleaved_runs_of_several_workers.json");
    openagents_runtime::replay::runner::run_fixture(&fixture, live.database.journal())
        .await
        .unwrap();
    projection::catch_up(&live.database).await.unwrap();
    let report = check(live).await;
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(report.notes, Vec::<String>::new());
    assert_eq!(
        (report.read_models_compared, report.docs_compared),
        (
            projectors::all_specs().len() as u64,
            expected_docs("interleaved_runs_of_several_workers.json")
        )
    );

    // More runs that the live projectors have not seen yet: compared at their checkpoint, so
    // this is no drift, only a note.
    let (_, later) = load("run_happy_path_with_tools.json");
    openagents_runtime::replay::runner::run_fixture(&later, live.database.journal())
        .await
        .unwrap();
    let report = check(live).await;
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(
        report.notes.len(),
        projectors::all_specs().len(),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("read model runtime.run_summaries is 14 journal events behind")),
        "{:?}",
        report.notes
    );
    projection::catch_up(&live.database).await.unwrap();
    let report = check(live).await;
    assert_eq!(
        (report.problems.len(), report.notes.len()),
        (0, 0),
        "{report:?}"
    );

    // Rows edited behind the projectors' back: a payload, an owner, a deleted document.
    execute(
        live,
        "UPDATE {runtime}sync_run_summaries SET payload_hash = 'sha256:tampered' \
         WHERE doc_key = 'runtime/run_summary:run-b'",
    )
    .await;
    execute(
        live,
        "UPDATE {runtime}sync_codex_worker_summaries SET owner_user_id = 'mallory' \
         WHERE doc_key = 'runtime/codex_worker_summary:w-2'",
    )
    .await;
    execute(
        live,
        "DELETE FROM {runtime}sync_run_summaries WHERE doc_key = 'runtime/run_summary:run_happy'",
    )
    .await;
    let report = check(live).await;
    let mut problems = report.problems.clone();
    problems.sort();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "read model runtime.codex_worker_summaries runtime/codex_worker_summary:w-2: \
             owner live user=mallory rebuilt user="
        ),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with(
            "read model runtime.run_summaries runtime/run_summary:run-b: payload_hash live \
             sha256:tampered rebuilt sha256:"
        ),
        "{problems:?}"
    );
    assert_eq!(
        problems[2],
        "read model runtime.run_summaries runtime/run_summary:run_happy: missing from the live \
         read model (rebuilt version 14)"
    );

    // The command prints each as a DRIFT line and exits non-zero.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_openagents-runtime"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("OA_DATA_DIR")
        .args(["replay", "--journal"]);
    match (&live.url, &live.data_dir) {
        (Some(url), _) => command.args(["--database-url", url]),
        (None, Some(dir)) => command.arg("--data-dir").arg(dir),
        _ => unreachable!(),
    };
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("DRIFT read model runtime.run_summaries runtime/run_summary:run-b: payload_hash live sha256:tampered"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("DRIFT ").count(), 3, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_check_compares_read_models_with_their_rebuild_on_sqlite() {
    let db = TestDb::sqlite().await;
    read_model_drift_on(&db).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_check_compares_read_models_with_their_rebuild_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        assert!(!in_ci());
        return;
    };
    read_model_drift_on(&db).await;
    db.cleanup().await;
}

mod live {
    //! The drift check against a server that keeps running, its projectors (the real sync lane)
    //! following the journal while the check reads it.

    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::check;
    use crate::app::spawn_app_with_sync;
    use crate::support::on_both_backends;
    use engine::testing::TestDb;

    on_both_backends!(a_running_servers_read_models_have_no_drift_while_it_projects);

    async fn a_running_servers_read_models_have_no_drift_while_it_projects(db: &TestDb) {
        let app = spawn_app_with_sync(db).await;
        assert!(app.sync.is_some());
        app.running_run("run_live").await;
        for i in 0..5 {
            let response = app
                .text_delta("run_live", &format!("f-{i}"), "streaming")
                .await;
            assert_eq!(response.status, 202, "{}", response.text);
        }
        let worker = app
            .create_worker(json!({"worker_id": "w-live", "workspace_ref": "ws"}))
            .await;
        assert_eq!(worker.status, 202, "{}", worker.text);
        // Checked while the projectors catch up (compared at their checkpoints, never drift)
        // until they have caught up (no note left).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let report = check(db).await;
            assert_eq!(report.problems, Vec::<String>::new());
            if report.notes.is_empty() {
                assert_eq!(
                    report.read_models_compared,
                    projectors::all_specs().len() as u64
                );
                // One run summary, one worker summary, one document per worker event, one per
                // run event (the start and five frames).
                assert_eq!(report.docs_compared, 1 + 1 + 1 + 6, "{report:?}");
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", report.notes);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        app.shutdown().await.unwrap();
    }
}

/// A generated corpus (`replay --generate-runs`) is blessed by this build and passes its own
/// check, fixtures replayed side by side; the same seed writes the same files; one altered
/// expected value fails the check at that value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_corpus_passes_its_own_check_and_fails_when_an_expectation_is_altered() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |out: PathBuf| ReplayArgs {
        inputs: vec![out],
        check: false,
        bless: false,
        print: false,
        database_url: None,
        journal: false,
        data_dir: dir.path().to_owned(),
        scratch_database_url: None,
        generate_runs: Some(50),
        seed: 3,
        jobs: Some(2),
    };
    let corpus = dir.path().join("corpus");
    run(generate(corpus.clone())).await.unwrap();
    let files = expand_inputs(std::slice::from_ref(&corpus)).unwrap();
    // 50 runs, 20 per fixture here would be 3 files; the default is 100 per fixture: one.
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let mut value: Value = serde_json::from_str(&text).unwrap();
    let expected = &value["expected"];
    assert_eq!(expected["runs"].as_object().unwrap().len(), 50);
    let outcomes = expected["outcomes"].as_array().unwrap();
    for label in ["appended", "receipt recorded", "replayed"] {
        assert!(
            outcomes.iter().any(|o| o.as_str().unwrap().contains(label)),
            "no {label:?} outcome"
        );
    }
    let statuses: Vec<&str> = expected["runs"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    for status in ["succeeded", "failed", "canceled"] {
        assert!(statuses.contains(&status), "no {status} run: {statuses:?}");
    }
    assert!(expected["workers"].as_object().unwrap().len() >= 2);

    // Deterministic: the same seed writes the same bytes.
    let again = dir.path().join("again");
    run(generate(again.clone())).await.unwrap();
    let again_text = std::fs::read_to_string(again.join(files[0].file_name().unwrap())).unwrap();
    assert!(
        again_text == text,
        "the same seed must give the same corpus"
    );

    let check = ReplayArgs {
        check: true,
        generate_runs: None,
        ..generate(corpus.clone())
    };
    run(check.clone()).await.unwrap();

    let run_id = expected["runs"]
        .as_object()
        .unwrap()
        .keys()
        .nth(17)
        .unwrap()
        .clone();
    value["expected"]["runs"][&run_id]["event_count"] = Value::from(999);
    std::fs::write(&files[0], serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let results = replay_file(&files[0], &ScratchTarget::Embedded, Mode::Check)
        .await
        .unwrap();
    match &results[0].status {
        ItemStatus::Diverged(report) => assert!(
            report.contains(&format!("$.runs[\"{run_id}\"].event_count")) && report.contains("999"),
            "{report}"
        ),
        other => panic!("an altered expectation must diverge, got {other:?}"),
    }
    assert!(run(check).await.is_err(), "the check must fail");
}

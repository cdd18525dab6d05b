//! Deterministic replay: every fixture in `replay-fixtures/` (and the REPLAY.jsonl files and the
//! original runtime's histories) replays on both backends to exactly its expected outputs; a
//! divergence is reported at its first differing place; `--bless` rewrites expectations; the
//! `--journal` drift check finds rows edited behind the engine's back.

use std::path::{Path, PathBuf};

use engine::testing::{admin_url, in_ci, TestDb};
use openagents_runtime::replay::fixture::Fixture;
use openagents_runtime::replay::journal_check::check_journal;
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
    let (_, fixture) = load("run_conflicting_appends.json");
    let first = produce(&fixture, &ScratchTarget::Embedded)
        .await
        .unwrap()
        .output;
    let second = produce(&fixture, &ScratchTarget::Embedded)
        .await
        .unwrap()
        .output;
    assert_eq!(
        serde_json::to_string(&first).unwrap(),
        serde_json::to_string(&second).unwrap()
    );
    if let Some(target) = postgres_target().await {
        let on_pg = produce(&fixture, &target).await.unwrap().output;
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&on_pg).unwrap()
        );
    }
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

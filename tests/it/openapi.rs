//! The served OpenAPI document against independent tools, on a real server (everything `serve`
//! mounts, SQLite journal):
//! - `openapi-spec-validator` (Python) must accept the document, and must refuse a copy with the
//!   bug it once had (a query parameter declared `in: path`), so the check is known to bite;
//! - Schemathesis 4 (`--checks all`, tests/schemathesis/) fuzzes every operation with fresh
//!   single-use tokens minted per request by its auth hook, and must find no disagreement
//!   between the document and the server.
//!
//! Both tools are pinned in tests/schemathesis/requirements.txt and installed once into a venv
//! under the target directory (`target/tmp/openapi-venv`). Without `python3` the tests are
//! skipped, and fail when `CI` is set. docs/http-api.md says how to run the fuzzer by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use engine::testing::TestDb;
use serde_json::{json, Value};
use sync_gateway::auth::mint::{mint, MintRequest};
use sync_gateway::test_utils::{auth_config, now_secs};

use crate::app::{spawn_app_with, Options, TestApp, TEST_SECRET};

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis")
}

/// The venv's Python with the pinned tools, installed on first use (idempotent: a stamp holds
/// the requirements it was built from; a venv is built beside it and renamed into place, so
/// parallel test processes never see a half-installed one). `None` (a skip) without `python3`
/// outside CI.
fn python() -> Option<PathBuf> {
    // The tests of this process install one after the other.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let requirements = std::fs::read_to_string(tools_dir().join("requirements.txt"))
        .expect("tests/schemathesis/requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.stamp");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) && python.exists() {
        return Some(python);
    }
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !engine::testing::in_ci(),
            "CI is set but `python3` is not installed"
        );
        eprintln!("SKIPPING the OpenAPI validator and fuzzer: `python3` is not installed");
        return None;
    }
    let building = venv.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let run = |command: &mut Command| {
        let output = command.output().expect("run python3");
        assert!(
            output.status.success(),
            "{command:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&building));
    run(Command::new(building.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(tools_dir().join("requirements.txt")));
    std::fs::write(building.join("requirements.stamp"), &requirements).expect("write the stamp");
    // Another test process may have finished first: then its venv is as good as this one (and
    // may be in use). Only a stale one is replaced.
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) {
        let _ = std::fs::remove_dir_all(&building);
    } else {
        let _ = std::fs::remove_dir_all(&venv);
        if std::fs::rename(&building, &venv).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
    }
    assert!(python.exists(), "no venv at {}", venv.display());
    Some(python)
}

/// Runs the venv's Python in a scratch directory (Schemathesis keeps state in its working
/// directory), writing no bytecode into the source tree.
async fn run_python(python: PathBuf, args: Vec<String>, envs: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(python);
        command
            .args(args)
            .envs(envs)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("DATABASE_URL")
            .current_dir(scratch.path());
        command.output().expect("run the venv's python")
    })
    .await
    .expect("join")
}

async fn served_document(app: &TestApp) -> Value {
    let doc = app.get("/internal/v1/openapi.json").send().await;
    assert_eq!(doc.status, 200);
    doc.json
}

async fn validate(python: &Path, doc: &Value) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    run_python(
        python.to_owned(),
        vec![
            "-m".into(),
            "openapi_spec_validator".into(),
            file.display().to_string(),
        ],
        vec![],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_validator_accepts_the_served_document() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let app = spawn_app_with(
        &db,
        Options {
            everything: true,
            ..Options::default()
        },
    )
    .await;
    let doc = served_document(&app).await;
    let output = validate(&python, &doc).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the served document:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");

    // The check bites: the bug the document once had (a query parameter declared in the path).
    let mut broken = doc.clone();
    let list = &mut broken["paths"]["/internal/v1/codex/workers"]["get"]["parameters"];
    let limit = list
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["name"] == "limit")
        .expect("the worker list declares limit");
    assert_eq!(limit["in"], "query");
    limit["in"] = json!("path");
    limit["required"] = json!(true);
    let output = validate(&python, &broken).await;
    assert!(
        !output.status.success(),
        "a path parameter missing from the path was accepted"
    );
    db.cleanup().await;
}

/// A sync token for user 1 over every known topic (the hydration route's bearer).
fn sync_token() -> String {
    let known: Vec<String> = projectors::all_specs()
        .iter()
        .map(|s| s.topic.to_owned())
        .collect();
    mint(
        &auth_config(),
        &known,
        &MintRequest {
            subject: "user:1".into(),
            scopes: known.clone(),
            ttl_seconds: Some(900),
            ..MintRequest::default()
        },
        now_secs(),
    )
    .expect("sync token")
    .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_disagreement_between_the_document_and_the_server() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let app = spawn_app_with(
        &db,
        Options {
            everything: true,
            // Streams stay open for `tail_ms`; the served document states this server's maximum.
            configure: Box::new(|config| config.http.stream_tail_max = Duration::from_secs(2)),
            ..Options::default()
        },
    )
    .await;
    let doc = served_document(&app).await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let examples = std::env::var("OA_FUZZ_EXAMPLES").unwrap_or_else(|_| "5".into());
    let seed = std::env::var("OA_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let schemathesis = "import sys; from schemathesis.cli import schemathesis; \
                        sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())";
    let args: Vec<String> = [
        "-c",
        schemathesis,
        "--config-file",
        &tools_dir().join("schemathesis.toml").display().to_string(),
        "run",
        &file.display().to_string(),
        "--url",
        &app.base,
        "--checks",
        "all",
        "--max-examples",
        &examples,
        "--seed",
        &seed,
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    .map(str::to_owned)
    .to_vec();
    let envs = vec![
        ("SCHEMATHESIS_HOOKS".to_owned(), "hooks".to_owned()),
        ("PYTHONPATH".to_owned(), tools_dir().display().to_string()),
        (
            "OA_RUNTIME_SIGNATURE_SECRET".to_owned(),
            TEST_SECRET.to_owned(),
        ),
        ("OA_FUZZ_USER_ID".to_owned(), "1".to_owned()),
        ("OA_FUZZ_SYNC_TOKEN".to_owned(), sync_token()),
    ];
    let started = Instant::now();
    let output = run_python(python, args, envs).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "schemathesis: {operations} operations, {examples} examples each, seed {seed}, {:.0?}",
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "schemathesis found disagreements:\n{stdout}\n{stderr}"
    );
    // Every operation was exercised, none was left out by an error in the document.
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "not every operation was tested:\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(14)..].join("\n"));
    db.cleanup().await;
}

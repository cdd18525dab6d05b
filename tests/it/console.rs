//! The console: its embedded page and assets, the one-time login code `serve` prints on the
//! embedded journal and its exchange for an operator token, renewal, and the `/ops/v1/status`
//! snapshot — all against a real `serve` process. Then `clients/khala-js`'s `node --test` suite
//! (the Khala client against a real `serve`, and the console in real Chromium driven by
//! playwright-core), which this test runs so `cargo test --workspace` covers it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use engine::testing::TestDb;
use serde_json::{json, Value};

use crate::app::TEST_SECRET;
use crate::support::on_both_backends;

on_both_backends!(the_ops_snapshot_needs_an_operator_token_and_reports_projectors_and_topics);

/// A `serve` child whose stdout lines are all kept (the console line comes after the listening
/// line). Killed when dropped.
struct Serve {
    child: Child,
    base: String,
    lines: Vec<String>,
    data_dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(db: Option<&TestDb>) -> Serve {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_openagents-runtime"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--data-dir", data_dir.path().to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(url) = db.and_then(|db| db.url.as_deref()) {
            command
                .args(["--database-url", url])
                .args(["--db-max-connections", "8"])
                .env("OA_RUNTIME_SIGNATURE_SECRET", TEST_SECRET)
                // PostgreSQL requires a configured audit key (docs/audit.md).
                .env("OA_AUDIT_KEY", crate::audit_log::TEST_AUDIT_KEY)
                .env(
                    "OA_SYNC_JWT_KEY",
                    format!(
                        "{}={}",
                        sync_gateway::test_utils::TEST_KID,
                        sync_gateway::test_utils::TEST_SECRET
                    ),
                );
        }
        let mut child = command.spawn().expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("serve prints its console line");
            let done = line.starts_with("console");
            lines.push(line);
            if done {
                break;
            }
        }
        std::thread::spawn(move || for _ in rx {});
        let base = lines
            .iter()
            .find_map(|l| l.strip_prefix("openagents-runtime listening on "))
            .expect("listening line")
            .trim()
            .to_owned();
        Serve {
            child,
            base,
            lines,
            data_dir,
        }
    }

    fn console_line(&self) -> &str {
        self.lines.last().unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_openagents-runtime"))
            .args(args)
            .args(["--data-dir", self.data_dir.path().to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .output()
            .expect("run the CLI");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    async fn post(&self, path: &str, body: Value, bearer: Option<&str>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn login_code(line: &str) -> String {
    line.split("#code=")
        .nth(1)
        .expect("a code fragment")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_a_one_time_login_code_that_yields_an_operator_token_once() {
    let serve = Serve::start(None);
    let line = serve.console_line();
    assert!(
        line.starts_with("console (one-time login, valid 10 minutes): http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("/console#code="),
        "the code is in the fragment: {line}"
    );
    let code = login_code(line);
    assert_eq!(code.len(), 43);

    let (status, body) = serve
        .post("/console/api/login", json!({"code": "guessed"}), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_login_code"))
    );
    let (status, body) = serve
        .post(
            "/console/api/login",
            json!({"code": code, "extra": 1}),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );

    let (status, body) = serve
        .post("/console/api/login", json!({"code": code}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("a token").to_owned();
    let c = claims(&token);
    assert_eq!(c["oa_role"], "operator");
    assert_eq!(c["sub"], "operator:console");
    let scopes: Vec<&str> = c["oa_sync_scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for topic in [
        "runtime.run_summaries",
        "runtime.codex_worker_summaries",
        "runtime.payments",
    ] {
        assert!(scopes.contains(&topic), "{scopes:?}");
    }
    assert!(body["expires_in"].as_u64().unwrap() <= 900);

    let (status, body) = serve
        .post("/console/api/login", json!({"code": code}), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_login_code")),
        "a code works once"
    );

    // Renewal: operator tokens only.
    let (status, renewed) = serve
        .post("/console/api/renew", json!({}), Some(&token))
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(
        claims(renewed["token"].as_str().unwrap())["oa_role"],
        "operator"
    );
    let user = serve.cli(&[
        "token",
        "mint",
        "--subject",
        "user:1",
        "--scopes",
        "runtime.run_summaries",
    ]);
    let (status, body) = serve
        .post("/console/api/renew", json!({}), Some(&user))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("operator_required"))
    );
    let (status, body) = serve.post("/console/api/renew", json!({}), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // The operator token reads every principal's runs; a user token only its own.
    for user in ["1", "2"] {
        let internal = serve.cli(&["token", "internal", "--user-id", user]);
        let response = reqwest::Client::new()
            .post(format!("{}/internal/v1/runs", serve.base))
            .header("x-oa-user-id", user)
            .header("x-oa-runtime-signature", internal)
            .json(&json!({"run_id": format!("run_of_{user}"), "thread_id": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let keys = |body: Value| -> Vec<String> {
        let mut keys: Vec<String> = body["docs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["doc_key"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all: Value = serve
            .get("/sync/v1/topics/runtime.run_summaries/docs", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        if keys(all.clone()).len() == 2 {
            assert_eq!(
                keys(all),
                [
                    "runtime/run_summary:run_of_1",
                    "runtime/run_summary:run_of_2"
                ]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "runs never projected: {all}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let own: Value = serve
        .get("/sync/v1/topics/runtime.run_summaries/docs", Some(&user))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys(own), ["runtime/run_summary:run_of_1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_embedded_with_a_strict_policy() {
    let serve = Serve::start(None);
    let page = serve.get("/console", None).await;
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("<script type=\"module\" src=\"/console/assets/console.js\">"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN, no external URL"
    );
    for (name, content_type, marker) in [
        ("console.js", "text/javascript", "KhalaClient"),
        ("khala.js", "text/javascript", "export class KhalaClient"),
        ("console.css", "text/css", "--accent"),
    ] {
        let response = serve.get(&format!("/console/assets/{name}"), None).await;
        assert_eq!(response.status().as_u16(), 200, "{name}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(content_type));
        assert!(response.text().await.unwrap().contains(marker), "{name}");
    }
    let missing = serve.get("/console/assets/secrets.txt", None).await;
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    // The embedded khala.js is the package's module byte for byte.
    let served = serve
        .get("/console/assets/khala.js", None)
        .await
        .text()
        .await
        .unwrap();
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/khala-js/src/khala.js"),
    )
    .unwrap();
    assert_eq!(served, source);
}

async fn the_ops_snapshot_needs_an_operator_token_and_reports_projectors_and_topics(db: &TestDb) {
    let serve = Serve::start(Some(db));
    let embedded = db.url.is_none();
    let line = serve.console_line().to_owned();
    let token = if embedded {
        let (status, body) = serve
            .post(
                "/console/api/login",
                json!({"code": login_code(&line)}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    } else {
        // With PostgreSQL no code is printed: the console asks for a pasted token.
        assert!(line.ends_with("/console (paste a sync token)"), "{line}");
        assert!(!line.contains("code="));
        operator_token()
    };
    let response = serve.get("/ops/v1/status", None).await;
    assert_eq!(response.status().as_u16(), 401);
    let user = {
        if embedded {
            serve.cli(&[
                "token",
                "mint",
                "--subject",
                "user:1",
                "--scopes",
                "runtime.run_summaries",
            ])
        } else {
            sign(json!({"sub": "user:1", "oa_sync_scopes": ["runtime.run_summaries"]}))
        }
    };
    let response = serve.get("/ops/v1/status", Some(&user)).await;
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "operator_required");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let response = serve.get("/ops/v1/status", Some(&token)).await;
        assert_eq!(response.status().as_u16(), 200);
        let status: Value = response.json().await.unwrap();
        // Projectors register their checkpoints when they start.
        if status["projectors"].as_array().unwrap().len() >= 4 {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["readiness"]["status"], "ready");
    assert_eq!(
        status["journal_backend"],
        if embedded { "sqlite" } else { "postgres" }
    );
    let topics: Vec<&str> = status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert!(topics.contains(&"runtime.run_summaries"), "{topics:?}");
    let runs = status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "runtime.run_summaries")
        .unwrap();
    assert_eq!(runs["retention_secs"], 7 * 86_400);
    assert_eq!(runs["replay_budget"], 20_000);
    let head_before = runs["head_watermark"].as_u64().unwrap();

    // A command moves the journal head, then the projector's position and the topic head;
    // the lag returns to zero.
    let internal = if embedded {
        serve.cli(&["token", "internal", "--user-id", "1"])
    } else {
        crate::app::token(&crate::app::claims())
    };
    let response = reqwest::Client::new()
        .post(format!("{}/internal/v1/runs", serve.base))
        .header("x-oa-user-id", "1")
        .header("x-oa-runtime-signature", internal)
        .json(&json!({"run_id": "run_ops", "thread_id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    loop {
        let status: Value = serve
            .get("/ops/v1/status", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        let head = status["journal"]["head_position"].as_u64().unwrap();
        let projector = status["projectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["projector"] == "run_summaries")
            .unwrap()
            .clone();
        let topic = status["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == "runtime.run_summaries")
            .unwrap()
            .clone();
        if projector["lag_events"] == 0
            && topic["head_watermark"].as_u64().unwrap() > head_before
            && projector["position"].as_u64().unwrap() >= head
        {
            assert!(projector["lease_owner"].is_string(), "{projector}");
            assert!(status["sync"]["max_connections"].as_u64().unwrap() > 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sync token signed with sync-gateway's test key (the key this test gives `serve`).
fn sign(extra: Value) -> String {
    let now = sync_gateway::test_utils::now_secs();
    let mut claims = json!({
        "iss": "https://openagents.com", "aud": "openagents-sync",
        "iat": now, "nbf": now, "exp": now + 300, "jti": uuid::Uuid::now_v7().to_string(),
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    sync_gateway::test_utils::sign_claims(&claims)
}

/// What a control plane mints for its operators on PostgreSQL deployments.
fn operator_token() -> String {
    sign(json!({"sub": "operator:cp", "oa_role": "operator",
                "oa_sync_scopes": ["runtime.run_summaries", "runtime.codex_worker_summaries"]}))
}

// ---- the node suites ------------------------------------------------------------------------

fn khala_js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/khala-js")
}

/// Whether `node` runs; in CI its absence is a failure, elsewhere a skip.
fn node_available() -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !engine::testing::in_ci(),
            "CI is set but `node` is not installed"
        );
        eprintln!("SKIPPING the khala-js and browser tests: `node` is not installed");
    }
    ok
}

fn npm_ci(dir: &Path) {
    if dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/ws").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("run npm ci");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// Runs `node --test <files>` in clients/khala-js against this build's binary.
fn node_test(files: &[&str]) {
    if !node_available() {
        return;
    }
    let dir = khala_js_dir();
    npm_ci(&dir);
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(files)
        .current_dir(&dir)
        .env("OA_RUNTIME_BIN", env!("CARGO_BIN_EXE_openagents-runtime"))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run node --test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test {files:?} failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

#[test]
fn the_khala_js_client_passes_its_node_tests_against_a_real_serve() {
    node_test(&["test/khala.test.mjs", "test/signals.test.mjs"]);
}

#[test]
fn the_console_passes_its_browser_tests_in_chromium() {
    node_test(&["test/console.browser.test.mjs"]);
}

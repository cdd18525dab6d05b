//! `spawn_app`: the real server on `127.0.0.1:0` over a test database, and a [`TestApp`] with one
//! method per protocol action (Z2P style). Requests carry a freshly minted signature token and
//! `x-oa-user-id: 1` unless a test says otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregates::Timestamp;
use engine::artifacts::ReceiptSigner;
use engine::auth::{mint, InternalClaims, SigningSecret};
use engine::clock::{ManualClock, SequentialIds, Stamps, SystemClock};
use engine::testing::TestDb;
use engine::DatabaseConfig;
use openagents_runtime::sync::{SyncLane, SyncSettings};
use openagents_runtime::{App, RuntimeConfig, Server};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// The secret every test server shares with its test client.
pub const TEST_SECRET: &str = "integration-test-signature-secret";

pub fn secret() -> SigningSecret {
    SigningSecret::new(TEST_SECRET).expect("long enough")
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Fresh claims for user 1, valid for a minute.
pub fn claims() -> InternalClaims {
    InternalClaims {
        user_id: Some("1".into()),
        ..InternalClaims::new(now_unix(), 60)
    }
}

pub fn token(claims: &InternalClaims) -> String {
    mint(&secret(), claims)
}

fn init_test_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        openagents_runtime::telemetry::init_tracing(Default::default());
    }
}

pub fn database_config(db: &TestDb) -> DatabaseConfig {
    match (&db.url, &db.data_dir) {
        (Some(url), _) => DatabaseConfig::Postgres {
            url: url.clone(),
            max_connections: 8,
        },
        (None, Some(dir)) => DatabaseConfig::Sqlite {
            path: dir.join(engine::db::SQLITE_FILE),
        },
        _ => unreachable!("a test database has a URL or a directory"),
    }
}

/// A running test server.
pub struct TestApp {
    pub base: String,
    pub app: App,
    pub http: reqwest::Client,
    /// Set when the app was spawned with a manual clock.
    pub clock: Option<Arc<ManualClock>>,
    /// Set when the app was spawned with the sync lane (projectors and Khala).
    pub sync: Option<SyncLane>,
    /// The main listener's route templates (`Server::route_paths`).
    pub routes: Vec<String>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Options for [`spawn_app_with`].
pub struct Options {
    pub manual_clock: bool,
    pub configure: Box<dyn FnOnce(&mut RuntimeConfig) + Send>,
    /// Run the sync lane (projectors and Khala) with these settings; sync tokens are signed with
    /// `sync_gateway::test_utils::{TEST_KID, TEST_SECRET}` ([`sync_settings`]).
    pub sync: Option<SyncSettings>,
    /// Mount the run artifact routes and run the receipt recorder, as `serve` does
    /// (`openagents_runtime::audit::with_artifacts`); `Some(Some(key))` also signs receipts.
    pub artifacts: Option<Option<ReceiptSigner>>,
    /// Mount everything `serve` mounts on the main listener: audited artifacts, the audit log
    /// routes and tree task, the sync lane ([`sync_settings`] unless `sync` says otherwise) and
    /// the console (the authorization matrix covers exactly that route table).
    pub everything: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            manual_clock: false,
            configure: Box::new(|_| {}),
            sync: None,
            artifacts: None,
            everything: false,
        }
    }
}

/// Sync-lane settings for tests: the test sync-token key, the default topic policies, and
/// projectors tuned for tests (small batches, fast polls, a 1 s lease).
pub fn sync_settings() -> SyncSettings {
    SyncSettings {
        auth: sync_gateway::test_utils::auth_config(),
        gateway: sync_gateway::GatewayConfig::default(),
        runner: projectors::RunnerConfig {
            batch_size: 200,
            poll_interval: Duration::from_millis(50),
            lease_ttl: Duration::from_secs(1),
            ..projectors::RunnerConfig::default()
        },
    }
}

/// The app with the sync lane ([`sync_settings`]).
pub async fn spawn_app_with_sync(db: &TestDb) -> TestApp {
    spawn_app_with(
        db,
        Options {
            sync: Some(sync_settings()),
            ..Options::default()
        },
    )
    .await
}

pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, Options::default()).await
}

pub async fn spawn_app_with(db: &TestDb, options: Options) -> TestApp {
    spawn_app_on(db, db.database.clone(), options).await
}

/// Like [`spawn_app_with`] on a database handle of its own (another pool, and for SQLite another
/// writer lock, on the same database): a second runtime process as far as the database can tell.
pub async fn spawn_app_on(db: &TestDb, database: engine::Database, options: Options) -> TestApp {
    init_test_logs();
    let mut config = RuntimeConfig::new(
        database_config(db),
        db.data_dir.clone().unwrap_or_else(std::env::temp_dir),
        secret(),
    );
    config.http.body_limit_bytes = 64 * 1024;
    config.http.stream_tail_default = Duration::from_millis(300);
    config.workers.sweep_interval = Duration::from_millis(50);
    config.shutdown_grace = Duration::from_secs(10);
    (options.configure)(&mut config);
    let clock = options.manual_clock.then(|| {
        Arc::new(ManualClock::new(
            "2026-02-01T00:00:00Z"
                .parse::<Timestamp>()
                .expect("timestamp"),
            1,
        ))
    });
    let stamps = match &clock {
        Some(clock) => Stamps {
            clock: clock.clone(),
            ids: Arc::new(SequentialIds::default()),
        },
        None => Stamps {
            clock: Arc::new(SystemClock::default()),
            ids: Arc::new(engine::clock::UuidV7Ids),
        },
    };
    let app = App::new(config, database, stamps);
    let server = Server::bind(app.clone()).await.expect("bind 127.0.0.1:0");
    let server = match (options.everything, options.artifacts) {
        (true, _) => {
            let key = crate::audit_log::test_key();
            let server = openagents_runtime::audit::http::with_artifacts_audited(
                server,
                &app,
                None,
                Some(key.clone()),
            );
            openagents_runtime::audit::log::with_audit_log(
                server,
                &app,
                key,
                engine::audit_log::store::MaintainerConfig {
                    checkpoint_every_events: 5,
                    checkpoint_every: Duration::from_millis(200),
                    poll: Duration::from_millis(50),
                    settle: Duration::from_millis(10),
                    ..Default::default()
                },
            )
        }
        (false, Some(signer)) => openagents_runtime::audit::with_artifacts(server, &app, signer),
        (false, None) => server,
    };
    let sync_settings = match (options.everything, options.sync) {
        (true, None) => Some(sync_settings()),
        (_, settings) => settings,
    };
    let (server, sync) = match sync_settings {
        Some(settings) => {
            let (server, lane) = openagents_runtime::sync::with_sync(server, &app, settings);
            let server = if options.everything {
                openagents_runtime::console::with_console(server, &app, &lane).0
            } else {
                server
            };
            (server, Some(lane))
        }
        None => (server, None),
    };
    let addr = server.local_addr();
    let routes = server.route_paths();
    let handle = tokio::spawn(server.run_until_stopped());
    TestApp {
        base: format!("http://{addr}"),
        app,
        http: reqwest::Client::new(),
        clock,
        sync,
        routes,
        server: Some(handle),
    }
}

/// A response, read fully.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of an error envelope.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// `error.details.reason` of an error envelope.
    pub fn reason(&self) -> &str {
        self.json["error"]["details"]["reason"]
            .as_str()
            .unwrap_or("")
    }

    /// Asserts an error envelope with `status` and `code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        assert!(self.json["error"]["message"].is_string(), "{}", self.text);
        self
    }
}

/// One SSE event as received.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// Parses an SSE body (comments and keep-alives skipped).
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut event = SseEvent {
            event: None,
            id: None,
            data: String::new(),
        };
        let mut any = false;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event.event = Some(v.trim().to_owned());
                any = true;
            } else if let Some(v) = line.strip_prefix("id:") {
                event.id = Some(v.trim().to_owned());
                any = true;
            } else if let Some(v) = line.strip_prefix("data:") {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(v.trim_start());
                any = true;
            }
        }
        if any {
            events.push(event);
        }
    }
    events
}

/// A request under construction.
pub struct Req<'a> {
    app: &'a TestApp,
    method: Method,
    path: String,
    claims: InternalClaims,
    token: Option<Option<String>>,
    user: Option<String>,
    guest: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<(String, Option<&'static str>)>,
}

impl<'a> Req<'a> {
    /// Act as this user (`x-oa-user-id`) with a token for the same user.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self.claims.user_id = Some(user.to_owned());
        self
    }

    /// Act as a guest scope (and no user).
    pub fn guest(mut self, scope: &str) -> Self {
        self.user = None;
        self.claims.user_id = None;
        self.guest = Some(scope.to_owned());
        self.claims.guest_scope = Some(scope.to_owned());
        self
    }

    /// No principal headers and no principal claims.
    pub fn no_principal(mut self) -> Self {
        self.user = None;
        self.guest = None;
        self.claims.user_id = None;
        self.claims.guest_scope = None;
        self
    }

    /// Adjusts the token's claims.
    pub fn claims(mut self, edit: impl FnOnce(&mut InternalClaims)) -> Self {
        edit(&mut self.claims);
        self
    }

    /// Sends this exact token (or none).
    pub fn token(mut self, token: Option<&str>) -> Self {
        self.token = Some(token.map(str::to_owned));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn idempotency_key(self, key: &str) -> Self {
        self.header("idempotency-key", key)
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some((body.to_string(), Some("application/json")));
        self
    }

    pub fn raw(mut self, body: impl Into<String>, content_type: Option<&'static str>) -> Self {
        self.body = Some((body.into(), content_type));
        self
    }

    fn build(self) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.app.base, self.path);
        let mut request = self.app.http.request(self.method, url);
        let token = match self.token {
            Some(explicit) => explicit,
            None => Some(token(&self.claims)),
        };
        if let Some(token) = token {
            request = request.header("x-oa-runtime-signature", token);
        }
        if let Some(user) = self.user {
            request = request.header("x-oa-user-id", user);
        }
        if let Some(guest) = self.guest {
            request = request.header("x-oa-guest-scope", guest);
        }
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        if let Some((body, content_type)) = self.body {
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            request = request.body(body);
        }
        request
    }

    /// Sends and reads the whole response.
    pub async fn send(self) -> TestResponse {
        let response = self
            .build()
            .send()
            .await
            .expect("request reaches the server");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            text,
            json,
        }
    }

    /// Sends and returns the streaming response.
    pub async fn send_streaming(self) -> reqwest::Response {
        self.build()
            .send()
            .await
            .expect("request reaches the server")
    }
}

impl TestApp {
    pub fn req(&self, method: Method, path: &str) -> Req<'_> {
        Req {
            app: self,
            method,
            path: path.to_owned(),
            claims: claims(),
            token: None,
            user: Some("1".into()),
            guest: None,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn get(&self, path: &str) -> Req<'_> {
        self.req(Method::GET, path)
    }

    pub fn post(&self, path: &str, body: Value) -> Req<'_> {
        self.req(Method::POST, path).json(body)
    }

    // ---- runs

    pub async fn create_run(&self, run_id: &str, thread_id: &str) -> TestResponse {
        self.post(
            "/internal/v1/runs",
            json!({ "run_id": run_id, "thread_id": thread_id }),
        )
        .send()
        .await
    }

    pub async fn start_run(&self, run_id: &str, thread_id: &str) -> TestResponse {
        self.post(
            &format!("/internal/v1/runs/{run_id}/start"),
            json!({ "thread_id": thread_id }),
        )
        .send()
        .await
    }

    pub async fn append_frame(
        &self,
        run_id: &str,
        thread_id: &str,
        frame_id: &str,
        frame_type: &str,
        payload: Value,
    ) -> TestResponse {
        self.post(
            &format!("/internal/v1/runs/{run_id}/frames"),
            json!({ "thread_id": thread_id, "frame_id": frame_id, "type": frame_type, "payload": payload }),
        )
        .send()
        .await
    }

    pub async fn text_delta(&self, run_id: &str, frame_id: &str, delta: &str) -> TestResponse {
        self.append_frame(
            run_id,
            "thread_1",
            frame_id,
            "text_delta",
            json!({ "delta": delta }),
        )
        .await
    }

    pub async fn cancel_run(&self, run_id: &str, thread_id: &str, reason: &str) -> TestResponse {
        self.post(
            &format!("/internal/v1/runs/{run_id}/cancel"),
            json!({ "thread_id": thread_id, "reason": reason }),
        )
        .send()
        .await
    }

    pub async fn finish_run(&self, run_id: &str, thread_id: &str, status: &str) -> TestResponse {
        self.post(
            &format!("/internal/v1/runs/{run_id}/finish"),
            json!({ "thread_id": thread_id, "status": status }),
        )
        .send()
        .await
    }

    pub async fn run_snapshot(&self, run_id: &str, thread_id: &str) -> TestResponse {
        self.get(&format!(
            "/internal/v1/runs/{run_id}/snapshot?thread_id={thread_id}"
        ))
        .send()
        .await
    }

    /// Reads a run stream to its end (`[DONE]` or the tail window).
    pub async fn run_stream(&self, run_id: &str, query: &str) -> (TestResponse, Vec<SseEvent>) {
        let response = self
            .get(&format!(
                "/internal/v1/runs/{run_id}/stream?thread_id=thread_1&{query}"
            ))
            .send()
            .await;
        let events = parse_sse(&response.text);
        (response, events)
    }

    /// A created and started run on `thread_1`.
    pub async fn running_run(&self, run_id: &str) {
        assert_eq!(self.create_run(run_id, "thread_1").await.status, 201);
        assert_eq!(self.start_run(run_id, "thread_1").await.status, 202);
    }

    // ---- workers

    pub async fn create_worker(&self, body: Value) -> TestResponse {
        self.post("/internal/v1/codex/workers", body).send().await
    }

    pub async fn worker_snapshot(&self, worker_id: &str) -> TestResponse {
        self.get(&format!("/internal/v1/codex/workers/{worker_id}/snapshot"))
            .send()
            .await
    }

    pub async fn worker_heartbeat(&self, worker_id: &str, body: Value) -> TestResponse {
        self.post(
            &format!("/internal/v1/codex/workers/{worker_id}/heartbeat"),
            body,
        )
        .send()
        .await
    }

    pub async fn worker_request(
        &self,
        worker_id: &str,
        request_id: &str,
        method: &str,
        params: Value,
    ) -> TestResponse {
        self.post(
            &format!("/internal/v1/codex/workers/{worker_id}/requests"),
            json!({ "request": { "request_id": request_id, "method": method, "params": params } }),
        )
        .send()
        .await
    }

    pub async fn worker_event(
        &self,
        worker_id: &str,
        event_type: &str,
        payload: Value,
    ) -> TestResponse {
        self.post(
            &format!("/internal/v1/codex/workers/{worker_id}/events"),
            json!({ "event": { "event_type": event_type, "payload": payload } }),
        )
        .send()
        .await
    }

    pub async fn stop_worker(&self, worker_id: &str) -> TestResponse {
        self.post(
            &format!("/internal/v1/codex/workers/{worker_id}/stop"),
            json!({}),
        )
        .send()
        .await
    }

    pub async fn worker_stream(
        &self,
        worker_id: &str,
        query: &str,
    ) -> (TestResponse, Vec<SseEvent>) {
        let response = self
            .get(&format!(
                "/internal/v1/codex/workers/{worker_id}/stream?{query}"
            ))
            .send()
            .await;
        let events = parse_sse(&response.text);
        (response, events)
    }

    /// Begins shutdown and waits for the server to drain.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.app.shutdown_token().cancel();
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.app.shutdown_token().cancel();
    }
}

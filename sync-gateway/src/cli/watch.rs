//! `openagents-runtime watch --url … --token … --topic T [--from N] [--state FILE] [--json]`:
//! the reference Khala client. It hydrates over HTTP, subscribes from that watermark, prints
//! deltas, persists its watermark atomically, reconnects with backoff and re-hydrates on
//! `stale_cursor`. It doubles as the test client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{compat_params, socket_url, ClientError, KhalaClient, Push};
use crate::config::parse_duration;
use crate::http::{HydrateResponse, HydratedDoc};
use crate::protocol::{event, ErrorCode, SyncError, Update, CHANNEL_TOPIC, PHOENIX_TOPIC};

/// Watch one topic.
#[derive(Clone, Debug, clap::Args)]
pub struct WatchArgs {
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// A sync token.
    #[arg(long, env = "OA_SYNC_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The topic to watch, e.g. runtime.run_summaries.
    #[arg(long)]
    pub topic: String,
    /// Resume after this watermark instead of hydrating (overrides --state).
    #[arg(long)]
    pub from: Option<u64>,
    /// File holding the last watermark; read at start, rewritten atomically as updates arrive.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Longest wait between reconnects.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Exit after this many updates (scripts and tests).
    #[arg(long)]
    pub exit_after: Option<usize>,
}

/// The persisted state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    pub topic: String,
    pub watermark: u64,
}

impl WatchState {
    /// Reads `path`; a missing file is `None`.
    ///
    /// # Errors
    /// Unreadable or malformed files.
    pub fn load(path: &Path) -> anyhow::Result<Option<WatchState>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("malformed state file {}", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
        }
    }

    /// Writes `path` atomically (temp file, fsync, rename, fsync of the directory).
    ///
    /// # Errors
    /// I/O failures.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("watch-state")
        ));
        {
            let mut file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            file.write_all(&serde_json::to_vec(self)?)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// What the watcher reports.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    Hydrated {
        topic: String,
        watermark: u64,
        docs: Vec<HydratedDoc>,
    },
    Subscribed {
        resume_after: u64,
    },
    Update(Update),
    /// The stored watermark moved (after a batch or a heartbeat).
    Watermark(u64),
    /// The cursor was stale: the watcher re-hydrates.
    Resync(SyncError),
    /// The connection dropped; the watcher reconnects after `retry_in`.
    Reconnecting {
        error: String,
        retry_in: Duration,
    },
}

fn http_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        url.to_owned()
    }
}

/// Why watching stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The token is no longer accepted: refresh it (or log in again for `reauth_required`).
    #[error("{code}: {message}")]
    Auth { code: String, message: String },
    #[error("{0}")]
    Fatal(String),
}

enum Round {
    /// Start over: hydrate first.
    Rehydrate,
    /// Reconnect after the backoff.
    Retry(String, Option<Duration>),
    Done,
}

struct Watcher<'a> {
    args: &'a WatchArgs,
    http: reqwest::Client,
    events: mpsc::Sender<WatchEvent>,
    cursor: Option<u64>,
    updates: usize,
}

impl Watcher<'_> {
    async fn emit(&self, event: WatchEvent) {
        let _ = self.events.send(event).await;
    }

    fn persist(&self) -> Result<(), WatchError> {
        if let (Some(path), Some(watermark)) = (&self.args.state, self.cursor) {
            WatchState {
                topic: self.args.topic.clone(),
                watermark,
            }
            .save(path)
            .map_err(|e| WatchError::Fatal(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// One hydration page: `doc_key` for one document, else the page after `next` (the previous
    /// page's `next_after` and the first page's watermark).
    async fn get_docs(
        &self,
        doc_key: Option<&str>,
        next: Option<(&str, u64)>,
    ) -> Result<HydrateResponse, Round> {
        let mut request = self
            .http
            .get(format!(
                "{}/sync/v1/topics/{}/docs",
                http_base(&self.args.url),
                self.args.topic
            ))
            .bearer_auth(&self.args.token);
        if let Some(key) = doc_key {
            request = request.query(&[("doc_key", key)]);
        }
        if let Some((after, watermark)) = next {
            request = request.query(&[("after", after), ("watermark", &watermark.to_string())]);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Round::Retry(format!("hydration failed: {e}"), None))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let code = body
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            return Err(Round::Retry(
                format!("hydration refused ({status}): {code}: {message}"),
                None,
            ));
        }
        response
            .json()
            .await
            .map_err(|e| Round::Retry(format!("bad hydration response: {e}"), None))
    }

    async fn hydrate(&mut self) -> Result<(), Round> {
        let mut hydration = self.get_docs(None, None).await?;
        while let Some(after) = hydration.next_after.take() {
            let page = self
                .get_docs(None, Some((&after, hydration.watermark)))
                .await?;
            hydration.docs.extend(page.docs);
            hydration.next_after = page.next_after;
        }
        self.cursor = Some(hydration.watermark);
        self.emit(WatchEvent::Hydrated {
            topic: hydration.topic,
            watermark: hydration.watermark,
            docs: hydration.docs,
        })
        .await;
        self.persist()
            .map_err(|e| Round::Retry(e.to_string(), None))?;
        Ok(())
    }

    fn auth_failure(error: &SyncError) -> Option<WatchError> {
        matches!(
            error.code,
            ErrorCode::Unauthorized | ErrorCode::ReauthRequired
        )
        .then(|| WatchError::Auth {
            code: error.code.as_str().to_owned(),
            message: error.message.clone(),
        })
    }

    /// One connection's life: connect, join, subscribe, stream.
    async fn round(&mut self, shutdown: &CancellationToken) -> Result<Round, WatchError> {
        if self.cursor.is_none() {
            if let Err(round) = self.hydrate().await {
                return Ok(round);
            }
        }
        let url = socket_url(&self.args.url, &self.args.token, &compat_params());
        let mut client = match KhalaClient::connect(&url).await {
            Ok(client) => client,
            Err(e @ ClientError::Refused { status: 403, .. }) => {
                return Err(WatchError::Auth {
                    code: e.refusal_code().unwrap_or_else(|| "unauthorized".into()),
                    message: e.to_string(),
                })
            }
            Err(e) => return Ok(Round::Retry(e.to_string(), None)),
        };
        match client.join(json!({})).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return match Self::auth_failure(&error) {
                    Some(fatal) => Err(fatal),
                    None => Err(WatchError::Fatal(format!(
                        "join refused: {}: {}",
                        error.code.as_str(),
                        error.message
                    ))),
                }
            }
            Err(e) => return Ok(Round::Retry(e.to_string(), None)),
        }
        let cursor = self.cursor.unwrap_or(0);
        match client
            .subscribe_from(&[(self.args.topic.as_str(), Some(cursor))])
            .await
        {
            Ok(Ok(_)) => {
                self.emit(WatchEvent::Subscribed {
                    resume_after: cursor,
                })
                .await
            }
            Ok(Err(error)) => {
                return match error.code {
                    ErrorCode::StaleCursor => {
                        self.emit(WatchEvent::Resync(error)).await;
                        Ok(Round::Rehydrate)
                    }
                    ErrorCode::RateLimited => Ok(Round::Retry(
                        "rate limited".into(),
                        Some(Duration::from_millis(
                            error.extra_u64("retry_after_ms").unwrap_or(1000),
                        )),
                    )),
                    ErrorCode::Internal => Ok(Round::Retry(error.message, None)),
                    _ => Err(Self::auth_failure(&error).unwrap_or_else(|| {
                        WatchError::Fatal(format!(
                            "subscribe refused: {}: {}",
                            error.code.as_str(),
                            error.message
                        ))
                    })),
                }
            }
            Err(e) => return Ok(Round::Retry(e.to_string(), None)),
        }
        let mut sync_heartbeat = tokio::time::interval(Duration::from_secs(15));
        let mut phoenix_heartbeat = tokio::time::interval(Duration::from_secs(30));
        sync_heartbeat.tick().await;
        phoenix_heartbeat.tick().await;
        client.set_timeout(Duration::from_secs(120));
        loop {
            let push = tokio::select! {
                () = shutdown.cancelled() => {
                    client.close().await;
                    return Ok(Round::Done);
                }
                _ = sync_heartbeat.tick() => {
                    if let Err(e) = client.push(CHANNEL_TOPIC, event::SYNC_HEARTBEAT, json!({})).await {
                        return Ok(Round::Retry(e.to_string(), None));
                    }
                    continue;
                }
                _ = phoenix_heartbeat.tick() => {
                    if let Err(e) = client.push(PHOENIX_TOPIC, event::HEARTBEAT, json!({})).await {
                        return Ok(Round::Retry(e.to_string(), None));
                    }
                    continue;
                }
                push = client.next_push() => push,
            };
            match push {
                Ok(Push::Batch { batch, .. }) => {
                    let before = self.cursor;
                    for update in batch
                        .updates
                        .into_iter()
                        .filter(|u| u.topic == self.args.topic)
                    {
                        if self.cursor.is_some_and(|c| update.watermark <= c) {
                            continue; // already applied (idempotent by watermark)
                        }
                        let update = if update.hydration_required {
                            self.fetch_pointer(update).await
                        } else {
                            update
                        };
                        self.cursor = Some(update.watermark);
                        self.updates += 1;
                        self.emit(WatchEvent::Update(update)).await;
                        if self.args.exit_after.is_some_and(|n| self.updates >= n) {
                            self.persist()?;
                            client.close().await;
                            return Ok(Round::Done);
                        }
                    }
                    if self.cursor != before {
                        self.persist()?;
                        self.emit(WatchEvent::Watermark(self.cursor.unwrap_or(0)))
                            .await;
                    }
                }
                Ok(Push::Heartbeat(heartbeat)) => {
                    let delivered = heartbeat
                        .watermarks
                        .iter()
                        .find(|w| w.topic == self.args.topic)
                        .map(|w| w.watermark);
                    if let Some(wm) = delivered.filter(|wm| self.cursor.is_none_or(|c| *wm > c)) {
                        self.cursor = Some(wm);
                        self.persist()?;
                        self.emit(WatchEvent::Watermark(wm)).await;
                    }
                }
                Ok(Push::Error(error)) => match error.code {
                    ErrorCode::StaleCursor => {
                        self.emit(WatchEvent::Resync(error)).await;
                        client.close().await;
                        return Ok(Round::Rehydrate);
                    }
                    ErrorCode::SlowConsumer
                        if error.extra.get("action").and_then(Value::as_str)
                            == Some("disconnect") =>
                    {
                        let wait = Duration::from_millis(
                            error.extra_u64("reconnect_after_ms").unwrap_or(1000),
                        );
                        if error.extra.get("full_resync_required") == Some(&Value::Bool(true)) {
                            self.cursor = None;
                        }
                        return Ok(Round::Retry("slow consumer".into(), Some(wait)));
                    }
                    ErrorCode::Unauthorized | ErrorCode::ReauthRequired => {
                        return Err(Self::auth_failure(&error).expect("auth code"));
                    }
                    _ => {}
                },
                Ok(Push::ChannelClosed) => {
                    return Ok(Round::Retry("channel closed by the server".into(), None))
                }
                Ok(Push::Other(_)) => {}
                Err(e) => return Ok(Round::Retry(e.to_string(), None)),
            }
        }
    }

    /// Replaces a pointer update with the document fetched over HTTP (when still at that version).
    async fn fetch_pointer(&self, mut update: Update) -> Update {
        if let Ok(response) = self.get_docs(Some(&update.doc_key), None).await {
            if let Some(doc) = response
                .docs
                .into_iter()
                .find(|d| d.doc_key == update.doc_key)
            {
                if doc.doc_version >= update.doc_version {
                    update.payload = Some(doc.payload);
                    update.doc_version = doc.doc_version;
                    update.payload_hash = doc.payload_hash;
                }
            }
        }
        update
    }
}

/// Watches until `shutdown`, `--exit-after`, or an auth failure, sending what happens to `events`.
///
/// # Errors
/// [`WatchError::Auth`] when the token is refused (refresh it), [`WatchError::Fatal`] for
/// requests the server will never accept or an unwritable state file.
pub async fn watch(
    args: &WatchArgs,
    events: mpsc::Sender<WatchEvent>,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let stored = match &args.state {
        Some(path) => WatchState::load(path)
            .map_err(|e| WatchError::Fatal(format!("{e:#}")))?
            .filter(|s| s.topic == args.topic)
            .map(|s| s.watermark),
        None => None,
    };
    let mut watcher = Watcher {
        args,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| WatchError::Fatal(e.to_string()))?,
        events,
        cursor: args.from.or(stored),
        updates: 0,
    };
    let mut backoff = engine::backoff::Backoff::new(Duration::from_millis(250), args.max_backoff);
    loop {
        let round = watcher.round(&shutdown).await?;
        let wait = match round {
            Round::Done => return Ok(()),
            Round::Rehydrate => {
                watcher.cursor = None;
                backoff.reset();
                continue;
            }
            Round::Retry(error, hint) => {
                let delay = backoff.next_delay();
                // The server's hint is the same for every client: spread those retries too.
                let wait = hint.map_or(delay, |hint| {
                    hint + Duration::from_millis(rand::random::<u64>() % 250)
                });
                watcher
                    .emit(WatchEvent::Reconnecting {
                        error,
                        retry_in: wait,
                    })
                    .await;
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn print(event: &WatchEvent, json_lines: bool) {
    let line = if json_lines {
        match event {
            WatchEvent::Hydrated { topic, watermark, docs } => json!({"type": "hydrated", "topic": topic, "watermark": watermark, "docs": docs}),
            WatchEvent::Subscribed { resume_after } => json!({"type": "subscribed", "resume_after": resume_after}),
            WatchEvent::Update(update) => json!({"type": "update", "update": update}),
            WatchEvent::Watermark(wm) => json!({"type": "watermark", "watermark": wm}),
            WatchEvent::Resync(error) => json!({"type": "resync", "error": error}),
            WatchEvent::Reconnecting { error, retry_in } => {
                json!({"type": "reconnecting", "error": error, "retry_in_ms": u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)})
            }
        }
        .to_string()
    } else {
        match event {
            WatchEvent::Hydrated {
                topic,
                watermark,
                docs,
            } => {
                let mut text = format!(
                    "hydrated {topic} at watermark {watermark}: {} docs",
                    docs.len()
                );
                for doc in docs {
                    text.push_str(&format!(
                        "\n  {} v{} {}",
                        doc.doc_key, doc.doc_version, doc.payload
                    ));
                }
                text
            }
            WatchEvent::Subscribed { resume_after } => {
                format!("subscribed after watermark {resume_after}")
            }
            WatchEvent::Update(u) => match &u.payload {
                Some(payload) => format!(
                    "#{} {} v{} {payload}",
                    u.watermark, u.doc_key, u.doc_version
                ),
                None => format!(
                    "#{} {} v{} (too large; fetch over HTTP)",
                    u.watermark, u.doc_key, u.doc_version
                ),
            },
            WatchEvent::Watermark(_) => return,
            WatchEvent::Resync(error) => format!("stale cursor ({}): re-hydrating", error.message),
            WatchEvent::Reconnecting { error, retry_in } => {
                format!("disconnected ({error}); reconnecting in {retry_in:?}")
            }
        }
    };
    println!("{line}");
}

/// Runs `watch`, printing to stdout until Ctrl-C.
///
/// # Errors
/// As [`watch`].
pub async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(256);
    let json_lines = args.json;
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            print(&event, json_lines);
        }
    });
    let ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    let result = watch(&args, tx, shutdown).await;
    let _ = printer.await;
    result.map_err(anyhow::Error::from)
}

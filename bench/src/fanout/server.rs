//! The bench's helper process: a bare tokio-tungstenite broadcaster (the raw baseline, sending
//! synthetic updates or real Khala updates captured from the pipeline run), the gateway over an
//! in-memory source (the `--source memory` mode), a steady-rate commit driver, and an RSS
//! probe, driven by one command per stdin line.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{bench_auth, now_ns, FanoutArgs, BENCH_USER, FANOUT_TOPIC, REPLAY_TOPIC};
use sync_gateway::auth::{Revocations, Verifier};
use sync_gateway::config::{GatewayConfig, TopicPolicy};
use sync_gateway::gateway::Gateway;
use sync_gateway::hub::PreparedRow;
use sync_gateway::server;
use sync_gateway::source::{DocOwner, MemorySource, StreamRow};

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn payload(pad: &str) -> serde_json::Value {
    json!({"t": now_ns(), "pad": pad})
}

/// The same frame the gateway sends for one update, built the way the gateway builds it.
fn update_frame(topic: &str, watermark: u64, doc_key: &str, payload: serde_json::Value) -> String {
    let row = StreamRow {
        topic: topic.to_owned(),
        watermark,
        doc_key: doc_key.to_owned(),
        doc_version: 1,
        payload_hash: aggregates::canonical::hash_canonical(&payload),
        payload: payload.to_string(),
        owner: DocOwner::user(BENCH_USER),
    };
    let prepared = PreparedRow::prepare(&row, 256 * 1024);
    batch_frame(topic, &[prepared], watermark)
}

fn batch_frame(topic: &str, rows: &[Arc<PreparedRow>], head: u64) -> String {
    let mut text = String::from("[null,null,\"sync:v1\",\"sync:update_batch\",{\"updates\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&row.json);
    }
    text.push_str(&format!(
        "],\"replay_complete\":true,\"head_watermarks\":[{{\"topic\":\"{topic}\",\"watermark\":{head}}}]}}]"
    ));
    text
}

/// A captured Khala update (its JSON text) the baseline re-sends, stamped with its send time.
struct Template {
    /// The update's text up to and including `"payload":{`.
    head: String,
    /// The rest of the update's text.
    tail: String,
    topic: String,
}

impl Template {
    fn parse(update_json: &str) -> anyhow::Result<Self> {
        let update: serde_json::Value =
            serde_json::from_str(update_json).context("template update JSON")?;
        let text = update.to_string();
        let at = text
            .find("\"payload\":{")
            .context("the template update has a payload object")?
            + "\"payload\":{".len();
        Ok(Self {
            head: text[..at].to_owned(),
            tail: text[at..].to_owned(),
            topic: update["topic"].as_str().unwrap_or(FANOUT_TOPIC).to_owned(),
        })
    }

    /// The update, with `"t":<now ns>` as the payload's first field.
    fn stamped(&self) -> String {
        format!("{}\"t\":{},{}", self.head, now_ns(), self.tail)
    }

    /// A `sync:update_batch` frame of `updates` (texts) at head `head`.
    fn frame(&self, updates: &[String], head: u64) -> String {
        format!(
            "[null,null,\"sync:v1\",\"sync:update_batch\",{{\"updates\":[{}],\"replay_complete\":true,\"head_watermarks\":[{{\"topic\":\"{}\",\"watermark\":{head}}}]}}]",
            updates.join(","),
            self.topic
        )
    }
}

/// The raw baseline: every accepted socket gets every broadcast frame through an unbounded
/// queue and a writer that flushes in bursts; nothing else.
#[derive(Clone, Default)]
struct Baseline {
    /// std Mutex: pushes and iteration only, no await under it.
    clients: Arc<Mutex<Vec<mpsc::UnboundedSender<Message>>>>,
    replay: Arc<Mutex<Vec<Message>>>,
}

impl Baseline {
    fn broadcast(&self, message: &Message) {
        let mut clients = self.clients.lock().expect("baseline lock");
        clients.retain(|tx| tx.send(message.clone()).is_ok());
    }

    async fn accept_loop(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let baseline = self.clone();
            // As Khala's listener: no Nagle delay behind an unacknowledged frame.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(32 * 1024);
                let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                baseline
                    .clients
                    .lock()
                    .expect("baseline lock")
                    .push(tx.clone());
                let writer = tokio::spawn(async move {
                    while let Some(first) = rx.recv().await {
                        if sink.feed(first).await.is_err() {
                            return;
                        }
                        let mut burst = 1;
                        while burst < 64 {
                            match rx.try_recv() {
                                Ok(next) => {
                                    if sink.feed(next).await.is_err() {
                                        return;
                                    }
                                    burst += 1;
                                }
                                Err(_) => break,
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(message)) = stream.next().await {
                    if message.to_text().is_ok_and(|t| t == "replay") {
                        let frames = baseline.replay.lock().expect("baseline lock").clone();
                        for frame in frames {
                            let _ = tx.send(frame);
                        }
                    }
                }
                writer.abort();
            });
        }
    }
}

/// Commits `count` rows at `rate`/s through `commit`; returns when the last one is committed.
async fn steady(rate: u64, count: u64, mut commit: impl FnMut(u64)) {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        commit(i);
    }
}

/// The child's main loop.
///
/// # Errors
/// Binding or stdin failures.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    super::raise_fd_limit();
    let source = Arc::new(MemorySource::new());
    let config = GatewayConfig {
        topics: vec![
            TopicPolicy::new(FANOUT_TOPIC, Duration::from_secs(3600), u64::MAX),
            TopicPolicy::new(REPLAY_TOPIC, Duration::from_secs(3600), u64::MAX),
        ],
        max_connections: 100_000,
        max_replay_batch_size: 5_000,
        ..GatewayConfig::default()
    };
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(
        config,
        source.clone(),
        Verifier::new(bench_auth(), Revocations::in_memory()),
        shutdown.clone(),
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind gateway")?;
    let khala_port = listener.local_addr()?.port();
    let serving = tokio::spawn(server::serve(
        listener,
        server::routes(gateway.clone()),
        gateway.clone(),
        shutdown.clone(),
    ));
    let baseline = Baseline::default();
    let baseline_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind baseline")?;
    let baseline_port = baseline_listener.local_addr()?.port();
    tokio::spawn(
        baseline
            .clone()
            .accept_loop(baseline_listener, shutdown.clone()),
    );
    println!("ready {khala_port} {baseline_port}");

    let pad = "x".repeat(args.payload_bytes);
    // Set by `template`: the baseline then sends real Khala updates instead of synthetic ones.
    let mut template: Option<Template> = None;
    let owner = DocOwner::user(BENCH_USER);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["rss"] => println!("rss {}", rss_bytes()),
            ["commit", "khala", rate, count] => {
                let (rate, count) = (rate.parse()?, count.parse()?);
                steady(rate, count, |i| {
                    source.append(
                        FANOUT_TOPIC,
                        &format!("runtime/run_summary:bench{}", i % 100),
                        payload(&pad),
                        owner.clone(),
                    );
                })
                .await;
                println!("done");
            }
            ["commit", "baseline", rate, count] => {
                let (rate, count) = (rate.parse()?, count.parse()?);
                steady(rate, count, |i| {
                    let frame = match &template {
                        Some(t) => t.frame(&[t.stamped()], i + 1),
                        None => update_frame(
                            FANOUT_TOPIC,
                            i + 1,
                            &format!("runtime/run_summary:bench{}", i % 100),
                            payload(&pad),
                        ),
                    };
                    baseline.broadcast(&Message::text(frame));
                })
                .await;
                println!("done");
            }
            ["template", json @ ..] => match Template::parse(&json.join(" ")) {
                Ok(t) => {
                    template = Some(t);
                    println!("template");
                }
                Err(e) => println!("error {e:#}"),
            },
            ["seed-baseline", rows] => {
                let Some(t) = &template else {
                    println!("error no template");
                    continue;
                };
                let rows: u64 = rows.parse()?;
                let batch = usize::try_from(args.replay_batch_size.max(1)).unwrap_or(1000);
                let mut frames = Vec::new();
                let mut pending = Vec::with_capacity(batch);
                for i in 0..rows {
                    pending.push(t.stamped());
                    if pending.len() == batch || i + 1 == rows {
                        frames.push(Message::text(t.frame(&pending, i + 1)));
                        pending.clear();
                    }
                }
                *baseline.replay.lock().expect("baseline lock") = frames;
                println!("seeded {rows}");
            }
            ["seed", rows, _bytes] => {
                let rows: u64 = rows.parse()?;
                let batch = usize::try_from(args.replay_batch_size.max(1)).unwrap_or(1000);
                let mut frames = Vec::new();
                let mut pending: Vec<Arc<PreparedRow>> = Vec::new();
                let mut start = 0;
                while start < rows {
                    let end = (start + 10_000).min(rows);
                    let chunk: Vec<(String, serde_json::Value, DocOwner)> = (start..end)
                        .map(|i| {
                            (
                                format!("runtime/codex_worker_event:bench:{i}"),
                                payload(&pad),
                                owner.clone(),
                            )
                        })
                        .collect();
                    let first = source.head(REPLAY_TOPIC) + 1;
                    for (offset, (key, payload, _)) in chunk.iter().enumerate() {
                        let row = StreamRow {
                            topic: REPLAY_TOPIC.to_owned(),
                            watermark: first + offset as u64,
                            doc_key: key.clone(),
                            doc_version: 1,
                            payload_hash: aggregates::canonical::hash_canonical(payload),
                            payload: payload.to_string(),
                            owner: owner.clone(),
                        };
                        pending.push(PreparedRow::prepare(&row, 256 * 1024));
                        if pending.len() == batch {
                            let head = pending.last().map_or(0, |r| r.watermark);
                            frames.push(Message::text(batch_frame(REPLAY_TOPIC, &pending, head)));
                            pending.clear();
                        }
                    }
                    source.append_many(REPLAY_TOPIC, chunk);
                    start = end;
                }
                if !pending.is_empty() {
                    let head = pending.last().map_or(0, |r| r.watermark);
                    frames.push(Message::text(batch_frame(REPLAY_TOPIC, &pending, head)));
                }
                *baseline.replay.lock().expect("baseline lock") = frames;
                println!("seeded {}", source.head(REPLAY_TOPIC));
            }
            ["quit"] => break,
            other => println!("error unknown command {other:?}"),
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    Ok(())
}

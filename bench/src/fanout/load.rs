//! The bench's clients: N WebSocket connections that join and subscribe (Khala) or just connect
//! (baseline), then count updates and record commit → client latency from each update's `t`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{bench_auth, now_ns, ServerProcess, BENCH_USER, FANOUT_TOPIC, REPLAY_TOPIC};
use sync_gateway::auth::mint::{mint, MintRequest};
use sync_gateway::client::socket_url;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Khala,
    Baseline,
}

/// One run's measurements.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub expected: u64,
    pub delivered: u64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A replay measurement.
#[derive(Clone, Copy, Debug)]
pub struct ReplayReport {
    pub rate: f64,
    pub seconds: f64,
}

struct Shared {
    /// Updates each client must receive before it stops (set before the commits start).
    expected: AtomicU64,
    /// Set when `expected` is known.
    start: Notify,
    ready: AtomicUsize,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    /// Latencies in microseconds.
    histogram: Mutex<Histogram<u64>>,
}

pub(crate) struct Clients {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    count: usize,
}

pub(crate) fn token() -> String {
    let config = bench_auth();
    let topics = vec![FANOUT_TOPIC.to_owned(), REPLAY_TOPIC.to_owned()];
    mint(
        &config,
        &topics,
        &MintRequest {
            subject: format!("user:{BENCH_USER}"),
            scopes: topics.clone(),
            ttl_seconds: Some(900),
            ..MintRequest::default()
        },
        chrono::Utc::now().timestamp(),
    )
    .expect("bench token")
    .token
}

pub(crate) fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20))
}

/// Counts updates in a frame and the latency of each from its `"t":<ns>` stamp.
fn scan(text: &str, now: u64, latencies: &mut Vec<u64>) -> u64 {
    let mut count = 0;
    let mut rest = text;
    while let Some(pos) = rest.find("\"t\":") {
        rest = &rest[pos + 4..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(t) = rest[..digits].parse::<u64>() {
            latencies.push(now.saturating_sub(t) / 1000);
            count += 1;
        }
    }
    count
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(target: Target, port: u16, token: &str) -> anyhow::Result<Ws> {
    let url = match target {
        Target::Khala => socket_url(&format!("ws://127.0.0.1:{port}"), token, &[]),
        Target::Baseline => format!("ws://127.0.0.1:{port}/"),
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true).await?;
    if target == Target::Khala {
        ws.send(Message::text(r#"["1","1","sync:v1","phx_join",{}]"#))
            .await?;
        ws.send(Message::text(format!(
            r#"["1","2","sync:v1","sync:subscribe",{{"topics":["{FANOUT_TOPIC}"]}}]"#
        )))
        .await?;
        // Until the replay-complete batch of the subscription.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains("sync:update_batch") => break,
                Some(Ok(Message::Text(text))) if text.contains("\"error\"") => {
                    bail!("subscribe failed: {text}")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed during subscribe"),
            }
        }
    }
    Ok(ws)
}

async fn client(mut ws: Ws, shared: Arc<Shared>) {
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let mut latencies = Vec::with_capacity(1024);
    let mut received = 0;
    loop {
        // Read continuously (nothing stamped arrives before the commits start); stop once the
        // run's expected count is known and reached.
        let expected = shared.expected.load(Ordering::SeqCst);
        if expected > 0 && received >= expected {
            break;
        }
        let message = if expected == 0 {
            let notified = shared.start.notified();
            tokio::select! {
                () = notified => continue,
                message = ws.next() => message,
            }
        } else {
            ws.next().await
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                received += scan(text.as_str(), now_ns(), &mut latencies);
                if latencies.len() >= 512 {
                    flush(&shared, &mut latencies);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    flush(&shared, &mut latencies);
    shared.delivered.fetch_add(received, Ordering::Relaxed);
    shared
        .last_delivery_ns
        .fetch_max(now_ns(), Ordering::Relaxed);
    let _ = ws.close(None).await;
}

fn flush(shared: &Shared, latencies: &mut Vec<u64>) {
    let mut histogram = shared.histogram.lock().expect("histogram lock");
    for &us in latencies.iter() {
        let _ = histogram.record(us.max(1));
    }
    latencies.clear();
}

/// Opens `n` connections (subscribed, for Khala) and waits until all are ready.
pub(crate) async fn connect_all(target: Target, port: u16, n: usize) -> anyhow::Result<Clients> {
    let shared = Arc::new(Shared {
        expected: AtomicU64::new(0),
        start: Notify::new(),
        ready: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        histogram: Mutex::new(
            Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
        ),
    });
    let token = Arc::new(token());
    let handshakes = Arc::new(Semaphore::new(128));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (shared, token, handshakes, failures) = (
            shared.clone(),
            token.clone(),
            handshakes.clone(),
            failures.clone(),
        );
        tasks.spawn(async move {
            let permit = handshakes.acquire_owned().await;
            let ws = open(target, port, &token).await;
            drop(permit);
            match ws {
                Ok(ws) => client(ws, shared).await,
                Err(e) => {
                    if failures.fetch_add(1, Ordering::SeqCst) == 0 {
                        eprintln!("connection failed: {e:#}");
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while shared.ready.load(Ordering::SeqCst) + failures.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} connections became ready",
                shared.ready.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = failures.load(Ordering::SeqCst);
    if failed > 0 {
        bail!("{failed} of {n} connections failed");
    }
    Ok(Clients {
        shared,
        tasks,
        count: n,
    })
}

/// Commits `count` rows at `rate` and measures delivery to every client.
pub(crate) async fn measure(
    server: &mut ServerProcess,
    mut clients: Clients,
    target: &str,
    rate: u64,
    count: u64,
) -> anyhow::Result<LoadReport> {
    let shared = clients.shared.clone();
    shared.expected.store(count, Ordering::SeqCst);
    shared.start.notify_waiters();
    let first_commit = now_ns();
    let reply = server
        .call(&format!("commit {target} {rate} {count}"))
        .await?;
    if reply.first().map(String::as_str) != Some("done") {
        bail!("commit failed: {reply:?}");
    }
    let drain = tokio::time::timeout(Duration::from_secs(60), async {
        while clients.tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        clients.tasks.abort_all();
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let elapsed = shared
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(first_commit) as f64
        / 1e9;
    let histogram = shared.histogram.lock().expect("histogram lock");
    Ok(LoadReport {
        expected: count * clients.count as u64,
        delivered,
        deliveries_per_sec: if elapsed > 0.0 {
            delivered as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: histogram.max() as f64 / 1000.0,
    })
}

/// One client catches up on `rows` rows of `topic` after watermark `from`; returns the rate and
/// the first update it received (Khala only: the baseline's template).
pub(crate) async fn replay(
    target: Target,
    port: u16,
    topic: &str,
    from: u64,
    rows: u64,
    batch: u64,
) -> anyhow::Result<(ReplayReport, Option<serde_json::Value>)> {
    let token = token();
    let url = match target {
        Target::Khala => socket_url(&format!("ws://127.0.0.1:{port}"), &token, &[]),
        Target::Baseline => format!("ws://127.0.0.1:{port}/"),
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true).await?;
    let started = Instant::now();
    match target {
        Target::Khala => {
            ws.send(Message::text(r#"["1","1","sync:v1","phx_join",{}]"#))
                .await?;
            let subscribe = json!(["1", "2", "sync:v1", "sync:subscribe", {"topics": [topic], "resume_after": {topic: from}, "replay_batch_size": batch}]);
            ws.send(Message::text(subscribe.to_string())).await?;
        }
        Target::Baseline => ws.send(Message::text("replay")).await?,
    }
    let mut received = 0u64;
    let mut sample = None;
    while received < rows {
        match tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("replay stalled")?
        {
            Some(Ok(Message::Text(text))) => {
                if text.contains("\"status\":\"error\"") {
                    bail!("replay subscribe failed: {text}");
                }
                let updates = text.matches("\"doc_key\":").count() as u64;
                if updates > 0 && sample.is_none() && target == Target::Khala {
                    sample = serde_json::from_str::<serde_json::Value>(text.as_str())
                        .ok()
                        .and_then(|f| f.get(4)?.get("updates")?.get(0).cloned());
                }
                received += updates;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during replay after {received} rows"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    Ok((
        ReplayReport {
            rate: rows as f64 / seconds,
            seconds,
        },
        sample,
    ))
}

//! Where replay from the store spends its time: seeds `--rows` run-summary-sized rows into the
//! projectors' store (embedded SQLite in a temporary directory, or `--database-url`
//! PostgreSQL, which must be an empty database), then reads them back in pages the way a
//! replaying session does, measuring in the same run:
//! - the raw store read (`SyncStore::read_stream`, the floor any replay through the store pays),
//! - `StoreSource::read_stream` plus `PreparedRow::prepare` (a page read row by row),
//! - `StoreSource::read_stream_joined` (a page whose update objects the database builds and
//!   joins: what a replaying session reads),
//! - a whole replay: the gateway over `StoreSource` on 127.0.0.1, one WebSocket client in this
//!   process subscribing from watermark 0 with `replay_batch_size` = the page size.
//!
//! `cargo run --release -p openagents-bench -- store-replay --rows 200000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::journal::GlobalCursor;
use projectors::store::{BatchCommit, NewRow, SyncStore, Target};
use projectors::{DocOwner, OwnerFilter, SyncNotifier};
use sync_gateway::hub::PreparedRow;
use sync_gateway::source::{StoreSource, SyncSource};

/// `openagents-bench store-replay`.
#[derive(Debug, clap::Args)]
pub struct StoreReplayArgs {
    /// Rows to seed and replay.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Rows per page (the client's `replay_batch_size`).
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// An empty PostgreSQL database (default: embedded SQLite in a temporary directory).
    #[arg(long)]
    database_url: Option<String>,
}

const TOPIC: &str = "runtime.run_summaries";

/// A run summary as the projector writes it (the fan-out bench's payload, ~670 bytes).
fn payload() -> serde_json::Value {
    serde_json::json!({
        "run_id": "bench_r1", "thread_id": "bench_thread", "status": "running", "latest_seq": 12,
        "owner_user_id": "bench", "owner_guest_scope": null, "org_id": null, "metadata": {},
        "frame_count": 11, "tool_calls": 0, "last_event_type": "run.frame_appended",
        "cancel_requested": false, "cancel_reason": null, "reason_class": null, "reason": null,
        "error_code": null, "created_at": "2026-12-03T10:17:31.123456Z",
        "started_at": "2026-12-03T10:17:31.223456Z", "finished_at": null,
        "updated_at": "2026-12-03T10:17:33.323456Z", "receipt": null,
        "runtime_source": {"source": "runtime", "aggregate_type": "run", "aggregate_id": "bench_r1",
                           "seq": 12, "seq_end": 12},
        "projection_version": 1, "projected_at": "2026-12-03T10:17:33.323456Z"
    })
}

fn rate(rows: usize, elapsed: Duration) -> String {
    format!(
        "{rows} rows in {elapsed:.2?} ({:.0}/s)",
        rows as f64 / elapsed.as_secs_f64()
    )
}

/// Seeds the store, measures the three stages and prints them.
///
/// # Errors
/// When the store cannot be opened or seeded, or the replay fails.
pub async fn run(cli: StoreReplayArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = engine::DatabaseConfig::from_parts(cli.database_url.as_deref(), dir.path(), 8);
    let database = engine::Database::connect(&config).await?;
    database.migrate().await?;
    let specs = projectors::all_specs();
    let spec = specs
        .iter()
        .find(|s| s.topic == TOPIC)
        .expect("run summaries")
        .clone();
    let store = SyncStore::new(&database, specs.clone());
    store.register(&spec, 0).await?;
    let lease = i64::MAX / 4;
    anyhow::ensure!(
        store
            .try_acquire(spec.name, "store-replay", 0, lease)
            .await?
            .is_some(),
        "the run_summaries lease is held: use an empty database"
    );
    let payload = payload();
    let text = payload.to_string();
    let hash = aggregates::canonical::hash_canonical(&payload);
    let started = Instant::now();
    let mut cursor = GlobalCursor::START;
    let mut seeded = 0u64;
    while seeded < cli.rows {
        let n = (cli.rows - seeded).min(2000);
        let rows: Vec<NewRow> = (seeded..seeded + n)
            .map(|i| NewRow {
                doc_key: format!("runtime/run_summary:bench_r{}", i % 100),
                doc_version: 1,
                payload: text.clone(),
                payload_hash: hash.clone(),
                owner: DocOwner::user("bench"),
                projected_at_ms: 1,
            })
            .collect();
        let to = GlobalCursor::new(1, seeded + n);
        store
            .commit(BatchCommit {
                spec: &spec,
                target: Target::Live,
                owner: "store-replay",
                from: cursor,
                to,
                events: n,
                rows,
                docs: Vec::new(),
                now_ms: 1,
                lease_ttl_ms: lease,
            })
            .await?;
        cursor = to;
        seeded += n;
    }
    println!(
        "{}: seeded {seeded} rows of {} B in {:.2?}",
        if cli.database_url.is_some() {
            "PostgreSQL"
        } else {
            "embedded SQLite"
        },
        text.len(),
        started.elapsed()
    );
    let filter = OwnerFilter::Principal {
        user_id: Some("bench".into()),
        guest_scope: None,
        org_id: None,
    };
    // Twice each: the first pass after the seed also pays the database's first-read costs.
    for pass in 1..=2 {
        let started = Instant::now();
        let (mut after, mut total) = (0, 0);
        loop {
            let rows = store.read_stream(TOPIC, after, cli.page, &filter).await?;
            let Some(last) = rows.last() else { break };
            after = last.watermark;
            total += rows.len();
        }
        println!(
            "pass {pass} raw SyncStore::read_stream, page {}: {}",
            cli.page,
            rate(total, started.elapsed())
        );
        let source = StoreSource::new(store.clone(), Arc::new(SyncNotifier::new()));
        let started = Instant::now();
        let (mut after, mut total) = (0, 0);
        loop {
            let rows = source.read_stream(TOPIC, after, cli.page, &filter).await?;
            let Some(last) = rows.last() else { break };
            after = last.watermark;
            total += rows.len();
            let prepared: Vec<_> = rows
                .iter()
                .map(|r| PreparedRow::prepare(r, 256 * 1024))
                .collect();
            std::hint::black_box(prepared);
        }
        println!(
            "pass {pass} StoreSource::read_stream + PreparedRow::prepare, page {}: {}",
            cli.page,
            rate(total, started.elapsed())
        );
        let started = Instant::now();
        let (mut after, mut total) = (0, 0);
        loop {
            let page = source
                .read_stream_joined(TOPIC, after, cli.page, &filter, 256 * 1024)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the store did not join a page"))?;
            if page.rows == 0 {
                break;
            }
            after = page.last_watermark;
            total += page.rows;
            std::hint::black_box(page.json);
        }
        println!(
            "pass {pass} StoreSource::read_stream_joined (update objects built and joined by the database), page {}: {}",
            cli.page,
            rate(total, started.elapsed())
        );
    }
    for pass in 1..=2 {
        let (rows, elapsed) = gateway_replay(&store, cli.page).await?;
        println!(
            "pass {pass} gateway replay over StoreSource to one WebSocket client, batch {}: {}",
            cli.page,
            rate(rows, elapsed)
        );
    }
    Ok(())
}

/// A gateway over the store on 127.0.0.1:0; one client replays everything from watermark 0.
async fn gateway_replay(store: &SyncStore, page: usize) -> anyhow::Result<(usize, Duration)> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let head = store.topic_states(&[TOPIC]).await?.remove(0).head_watermark;
    let auth = sync_gateway::auth::AuthConfig::new(
        sync_gateway::auth::KeySet::new()
            .with_active_hs256("replay", "store-replay-secret-0123")?,
    );
    let token = sync_gateway::auth::mint::mint(
        &auth,
        &[TOPIC.to_owned()],
        &sync_gateway::auth::mint::MintRequest {
            subject: "user:bench".into(),
            scopes: vec![TOPIC.into()],
            ..Default::default()
        },
        chrono::Utc::now().timestamp(),
    )?
    .token;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = sync_gateway::Gateway::start(
        sync_gateway::GatewayConfig {
            topics: vec![sync_gateway::TopicPolicy::new(
                TOPIC,
                Duration::from_secs(86_400),
                u64::MAX,
            )],
            max_replay_batch_size: page.max(1),
            ..sync_gateway::GatewayConfig::default()
        },
        Arc::new(StoreSource::new(
            store.clone(),
            Arc::new(SyncNotifier::new()),
        )),
        sync_gateway::auth::Verifier::new(auth, sync_gateway::auth::Revocations::in_memory()),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("ws://{}", listener.local_addr()?);
    let serving = tokio::spawn(sync_gateway::server::serve(
        listener,
        sync_gateway::server::routes(gateway.clone()),
        gateway,
        shutdown.clone(),
    ));
    let url = sync_gateway::client::socket_url(&base, &token, &[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let started = Instant::now();
    ws.send(Message::text(r#"["1","1","sync:v1","phx_join",{}]"#))
        .await?;
    let subscribe = serde_json::json!(["1", "2", "sync:v1", "sync:subscribe",
        {"topics": [TOPIC], "resume_after": {TOPIC: 0}, "replay_batch_size": page}]);
    ws.send(Message::text(subscribe.to_string())).await?;
    let mut received = 0usize;
    while (received as u64) < head {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                anyhow::ensure!(!text.contains("\"status\":\"error\""), "{text}");
                received += text.matches("\"doc_key\":").count();
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed after {received} rows"),
        }
    }
    let elapsed = started.elapsed();
    let _ = ws.close(None).await;
    shutdown.cancel();
    let _ = serving.await;
    Ok((received, elapsed))
}

//! `bench project`: projection throughput and commit → projected latency, each beside a raw
//! baseline measured in the same run, on a scratch PostgreSQL database (created and dropped).
//!
//! 1. **Rebuild.** A journal of `--events` run events (`--runs` runs: a `run.created` each, then
//!    `run.frame_appended` events, recorded-at times a millisecond apart) is written with one
//!    `INSERT … SELECT generate_series`. The measured path is a full rebuild of the run
//!    summaries read model (`reproject --all` does the same): the journal is read in commit
//!    order in batches, folded in Rust, the final documents of each batch upserted into the
//!    shadow table with the checkpoint in one transaction, and the shadow swapped in. The
//!    baseline, over the same batches: one `INSERT … SELECT … ON CONFLICT DO UPDATE` per batch
//!    that upserts the same rows — one run-summary-shaped document per run the batch touches
//!    (the same keys and fields, built with `json_build_object` from the batch's events, about
//!    the same size, hashed with `sha256`) — straight from the journal, no Rust in between, in
//!    its own transaction.
//! 2. **Latency.** `--rate` commands per second (text frames on `--latency-runs` started runs)
//!    through the real engine for `--duration-secs`, with the four projector runners running in
//!    process (woken by the engine's commit notices, as in `serve`). For each command: commit
//!    (the engine's append returned) → its stream row is visible to a reader woken by the
//!    projectors' stream-head notices. Baseline: the same rate of single-row INSERTs of a
//!    comparable row, each followed by an in-process wake-up of a reader that selects the new
//!    rows — the minimal commit → visible path without a projector hop.
//!
//! One file over ~600 lines on purpose: its two measurements share the scratch journal, the
//! seeding and the report, and read best top to bottom beside each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::ids::{FrameId, Owner, RunId, ThreadId, UserId};
use aggregates::run::{Run, RunCommand};
use anyhow::Context;
use clap::Args;
use engine::clock::Stamps;
use engine::notify::JournalNotifier;
use engine::{CommandContext, Database, DatabaseConfig, Engine, EngineConfig};
use hdrhistogram::Histogram;
use projectors::model::Projection;
use projectors::run_summary::RunSummaries;
use projectors::runner::{
    all_projectors, all_specs, now_ms, spec_of, ProjectorContext, Runner, RunnerConfig,
};
use projectors::{OwnerFilter, SyncNotifier, SyncStore};
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// PostgreSQL server to benchmark; a scratch database is created on it and dropped after.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Journal events for the rebuild measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,

    /// Runs those events belong to.
    #[arg(long, default_value_t = 10_000)]
    pub runs: u64,

    /// Journal events per projector batch (both paths use the same batches).
    #[arg(long, default_value_t = 5_000)]
    pub batch_size: usize,

    /// Commands per second during the latency measurement.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,

    /// Measured seconds of the latency phases.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,

    /// Runs the latency load spreads over.
    #[arg(long, default_value_t = 50)]
    pub latency_runs: usize,

    /// Skip the rebuild measurement.
    #[arg(long)]
    pub skip_rebuild: bool,

    /// Skip the latency measurement.
    #[arg(long)]
    pub skip_latency: bool,

    /// Keep the scratch database instead of dropping it.
    #[arg(long)]
    pub keep_database: bool,
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// When PostgreSQL cannot be reached or the scratch database cannot be created.
pub async fn run(args: ProjectArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.events >= args.runs,
        "--events must be ≥ --runs > 0"
    );
    anyhow::ensure!(
        args.rate > 0 && args.latency_runs > 0,
        "--rate and --latency-runs must be positive"
    );
    let args = &args;
    crate::scratch::with_scratch_database(
        &args.database_url,
        args.keep_database,
        |name| async move { measure(args, &name).await },
    )
    .await
}

async fn measure(args: &ProjectArgs, name: &str) -> anyhow::Result<()> {
    let database = Database::connect(&DatabaseConfig::Postgres {
        url: crate::scratch::with_database(&args.database_url, name),
        max_connections: 16,
    })
    .await?;
    database.migrate().await?;
    let Database::Postgres(pool) = &database else {
        unreachable!("connected to PostgreSQL")
    };
    println!(
        "bench project on PostgreSQL ({} cores), scratch database {name}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if !args.skip_rebuild {
        rebuild(args, &database, pool).await?;
    }
    if !args.skip_latency {
        latency(args, &database, pool).await?;
    }
    database.close().await;
    Ok(())
}

/// Writes `--events` run events in SQL: run `r` (0-based) has `run.created` at sequence 1 and
/// frames after it; events are interleaved across runs in position order.
async fn seed(args: &ProjectArgs, pool: &PgPool) -> anyhow::Result<()> {
    let started = Instant::now();
    let runs = args.runs as i64;
    let chunk: i64 = 200_000;
    let mut n: i64 = 0;
    while n < args.events as i64 {
        let end = (n + chunk).min(args.events as i64);
        // Event i belongs to run i % runs, at sequence i / runs + 1.
        sqlx::query(
            r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
               SELECT 'run', 'run_' || (i % $3), i / $3 + 1,
                      CASE WHEN i < $3 THEN 'run.created' ELSE 'run.frame_appended' END, '1.0',
                      CASE WHEN i < $3 THEN json_build_object('RunCreated', json_build_object(
                               'run_id', 'run_' || (i % $3), 'thread_id', 'thread_' || (i % $3),
                               'owner', json_build_object('kind', 'user', 'id', (i % 100)::text),
                               'metadata', '{}'::json, 'created_at', to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))
                      ELSE json_build_object('FrameAppended', json_build_object(
                               'frame_id', 'f' || i, 'frame_type', 'text_delta',
                               'payload', json_build_object('delta', repeat('x', 64)),
                               'payload_hash', 'sha256:' || md5(i::text), 'occurred_at', null,
                               'appended_at', to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))
                      END,
                      json_build_object('actor', 'user:bench',
                                        'recorded_at', to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
                 FROM (SELECT i, timestamp '2026-01-01' + i * interval '1 millisecond' AS ts
                         FROM generate_series($1::bigint, $2::bigint - 1) AS i) g"#,
        )
        .bind(n)
        .bind(end)
        .bind(runs)
        .execute(pool)
        .await
        .context("seed the journal")?;
        n = end;
    }
    sqlx::query("ANALYZE events").execute(pool).await?;
    println!(
        "seeded {} events of {} runs in {:.1} s",
        args.events,
        args.runs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A journal cursor `(transaction_id, position)` as stored.
type Cursor = (i64, i64);
/// One batch: events after `.0` up to and including `.1`.
type Range = (Cursor, Cursor);

/// The cursor ranges of the rebuild's batches, read once so both paths use the same batches.
async fn batches(pool: &PgPool, batch: usize) -> anyhow::Result<Vec<Range>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, position FROM (
             SELECT transaction_id, position,
                    row_number() OVER (ORDER BY transaction_id, position) AS n
               FROM events) q
          WHERE n % $1 = 0 OR n = (SELECT count(*) FROM events)
          ORDER BY transaction_id, position",
    )
    .bind(batch as i64)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut from = (0, 0);
    for to in rows {
        out.push((from, to));
        from = to;
    }
    Ok(out)
}

/// One pass of the raw baseline into a fresh `bench_docs`: its duration and rows upserted.
async fn raw_upserts(pool: &PgPool, ranges: &[Range]) -> anyhow::Result<(Duration, u64)> {
    sqlx::query("TRUNCATE bench_docs").execute(pool).await?;
    let started = Instant::now();
    let mut upserted: u64 = 0;
    for ((from_tx, from_pos), (to_tx, to_pos)) in ranges {
        let mut tx = pool.begin().await?;
        let done = sqlx::query(
            r#"INSERT INTO bench_docs (doc_key, doc_version, payload, payload_hash, watermark,
                                       owner_user_id, owner_guest_scope, owner_org_id,
                                       projected_at_ms, updated_at_ms)
               SELECT 'runtime/run_summary:' || aggregate_id, n, doc,
                      'sha256:' || encode(sha256(convert_to(doc::text, 'UTF8')), 'hex'), 0,
                      owner, NULL, NULL, 0, $5
                 FROM (
                   SELECT aggregate_id, count(*) AS n,
                          (array_agg(payload->'RunCreated'->'owner'->>'id'))[1] AS owner,
                          json_build_object(
                            'run_id', aggregate_id,
                            'thread_id', 'thread_' || substr(aggregate_id, 5),
                            'status', 'running',
                            'latest_seq', max(sequence) - 1,
                            'owner_user_id', (array_agg(payload->'RunCreated'->'owner'->>'id'))[1],
                            'owner_guest_scope', NULL, 'org_id', NULL, 'metadata', '{}'::json,
                            'frame_count', count(*), 'tool_calls', 0,
                            'last_event_type', (array_agg(event_type ORDER BY sequence DESC))[1],
                            'cancel_requested', false, 'cancel_reason', NULL,
                            'reason_class', NULL, 'reason', NULL, 'error_code', NULL,
                            'created_at', min(metadata->>'recorded_at'),
                            'started_at', NULL, 'finished_at', NULL,
                            'updated_at', max(metadata->>'recorded_at'),
                            'receipt', NULL,
                            'runtime_source', json_build_object(
                                'source', 'runtime', 'aggregate_type', 'run',
                                'aggregate_id', aggregate_id,
                                'seq', max(sequence), 'seq_end', max(sequence)),
                            'projection_version', 1,
                            'projected_at', max(metadata->>'recorded_at')) AS doc
                     FROM events
                    WHERE (transaction_id, position) > ($1, $2)
                      AND (transaction_id, position) <= ($3, $4)
                    GROUP BY aggregate_id) batch
               ON CONFLICT (doc_key) DO UPDATE SET
                   doc_version = bench_docs.doc_version + EXCLUDED.doc_version,
                   payload = EXCLUDED.payload, payload_hash = EXCLUDED.payload_hash,
                   owner_user_id = coalesce(bench_docs.owner_user_id, EXCLUDED.owner_user_id),
                   updated_at_ms = EXCLUDED.updated_at_ms"#,
        )
        .bind(from_tx)
        .bind(from_pos)
        .bind(to_tx)
        .bind(to_pos)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        upserted += done.rows_affected();
        tx.commit().await?;
    }
    Ok((started.elapsed(), upserted))
}

async fn rebuild(args: &ProjectArgs, database: &Database, pool: &PgPool) -> anyhow::Result<()> {
    seed(args, pool).await?;
    let ranges = batches(pool, args.batch_size).await?;

    // Raw baseline: the same documents per batch, upserted straight from the journal by SQL.
    sqlx::query("CREATE TABLE bench_docs (LIKE runtime.sync_run_summaries_rebuild INCLUDING ALL)")
        .execute(pool)
        .await?;
    // Measured before and after the runtime's rebuild (the first pass also warms the cache);
    // the faster of the two is the baseline.
    let (first, upserted) = raw_upserts(pool, &ranges).await?;

    // The runtime's full rebuild of run summaries, same batches, then the swap.
    let store = SyncStore::new(database, all_specs());
    let context = Arc::new(ProjectorContext::new(
        store.clone(),
        database.journal(),
        Arc::new(SyncNotifier::new()),
        watch::channel(0).1,
        RunnerConfig {
            batch_size: args.batch_size,
            ..RunnerConfig::default()
        },
    ));
    let spec = spec_of::<RunSummaries>();
    store.register(&spec, now_ms()).await?;
    store.request_rebuild(spec.name, now_ms()).await?;
    let started = Instant::now();
    let read = Runner::<RunSummaries>::new(context).catch_up().await?;
    let ours = started.elapsed();
    let (second, _) = raw_upserts(pool, &ranges).await?;
    let raw = first.min(second);
    let docs = store.all_docs(&spec).await?.len();
    anyhow::ensure!(
        docs as u64 == args.runs,
        "rebuilt {docs} documents, expected {}",
        args.runs
    );
    let versions: i64 =
        sqlx::query_scalar("SELECT sum(doc_version)::bigint FROM runtime.sync_run_summaries")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(
        versions as u64 == args.events,
        "document versions sum to {versions}"
    );

    let sizes: (f64, f64) = sqlx::query_as(
        "SELECT (SELECT avg(length(payload::text))::float8 FROM bench_docs),
                (SELECT avg(length(payload::text))::float8 FROM runtime.sync_run_summaries)",
    )
    .fetch_one(pool)
    .await?;
    let rate = |d: Duration| args.events as f64 / d.as_secs_f64();
    println!();
    println!(
        "## full rebuild of run summaries ({} events, {} runs, batches of {}, {} batches)",
        args.events,
        args.runs,
        args.batch_size,
        ranges.len()
    );
    println!("| path | seconds | events/s | documents upserted |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| raw SQL upsert (baseline, best of 2: {:.2} s / {:.2} s) | {:.2} | {:.0} | {upserted} |",
        first.as_secs_f64(),
        second.as_secs_f64(),
        raw.as_secs_f64(),
        rate(raw)
    );
    println!("| runtime rebuild (read, fold, upsert, swap) | {:.2} | {:.0} | {docs} final ({read} events read) |", ours.as_secs_f64(), rate(ours));
    println!(
        "documents: {:.0} bytes of JSON on average (baseline), {:.0} (runtime)",
        sizes.0, sizes.1
    );
    println!(
        "rebuild / raw throughput: **{:.2}** (target ≥ 0.5)",
        rate(ours) / rate(raw)
    );
    Ok(())
}

/// Pairs each command's acknowledgement with the moment a reader saw its result, whichever
/// comes first (a reader may see a row before the writer's task recorded its acknowledgement;
/// that sample counts as zero latency instead of being lost).
struct Matcher<K> {
    pending: HashMap<K, (Option<Instant>, Option<Instant>)>,
    histogram: Histogram<u64>,
}

impl<K: std::hash::Hash + Eq> Matcher<K> {
    fn new() -> Self {
        Self {
            pending: HashMap::new(),
            histogram: histogram(),
        }
    }

    fn acked(&mut self, key: K, at: Instant) {
        match self.pending.remove(&key) {
            Some((_, Some(seen))) => self.record(at, seen),
            _ => {
                self.pending.insert(key, (Some(at), None));
            }
        }
    }

    fn seen(&mut self, key: K, at: Instant) {
        match self.pending.remove(&key) {
            Some((Some(acked), _)) => self.record(acked, at),
            _ => {
                self.pending.insert(key, (None, Some(at)));
            }
        }
    }

    fn record(&mut self, acked: Instant, seen: Instant) {
        let micros = seen.saturating_duration_since(acked).as_micros() as u64;
        let _ = self.histogram.record(micros.max(1));
    }

    /// Acknowledged but never seen.
    fn unseen(&self) -> usize {
        self.pending
            .values()
            .filter(|(a, s)| a.is_some() && s.is_none())
            .count()
    }
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// Issues `rate` calls per second of `op(i)` for `duration`, concurrently (each call on its own
/// task at its slot), and waits for them all.
async fn paced<F, Fut>(rate: u64, duration: Duration, op: F) -> u64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let total = rate * duration.as_secs().max(1);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + period * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let op = op.clone();
        tasks.spawn(async move { op(i).await });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    total
}

async fn latency(args: &ProjectArgs, database: &Database, pool: &PgPool) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration_secs.max(1));

    // Raw baseline: INSERT, then an in-process wake-up of a reader that selects new rows.
    sqlx::query(
        "CREATE TABLE bench_visible (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                     k bigint NOT NULL, payload json NOT NULL)",
    )
    .execute(pool)
    .await?;
    let matcher: Arc<Mutex<Matcher<i64>>> = Arc::new(Mutex::new(Matcher::new()));
    let (wake, mut woken) = watch::channel(0u64);
    let stop = CancellationToken::new();
    let reader = {
        let pool = pool.clone();
        let matcher = matcher.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last: i64 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = woken.changed() => {}
                }
                let rows: Vec<(i64, i64)> = match sqlx::query_as(
                    "SELECT id, k FROM bench_visible WHERE id > $1 ORDER BY id",
                )
                .bind(last)
                .fetch_all(&pool)
                .await
                {
                    Ok(rows) => rows,
                    Err(_) => continue,
                };
                let now = Instant::now();
                let mut m = matcher.lock().await;
                for (id, k) in rows {
                    last = last.max(id);
                    m.seen(k, now);
                }
            }
        })
    };
    let payload = json!({"delta": "x".repeat(64), "pad": "y".repeat(400)}).to_string();
    let sent = {
        let pool = pool.clone();
        let matcher = matcher.clone();
        let wake = Arc::new(wake);
        paced(args.rate, duration, move |i| {
            let pool = pool.clone();
            let matcher = matcher.clone();
            let wake = wake.clone();
            let payload = payload.clone();
            async move {
                let k = i as i64;
                let result =
                    sqlx::query("INSERT INTO bench_visible (k, payload) VALUES ($1, $2::json)")
                        .bind(k)
                        .bind(&payload)
                        .execute(&pool)
                        .await;
                if result.is_ok() {
                    matcher.lock().await.acked(k, Instant::now());
                    wake.send_modify(|n| *n += 1);
                }
            }
        })
        .await
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let _ = reader.await;
    let raw = matcher.lock().await.histogram.clone();

    // The runtime: engine commands, projectors in process, a reader woken by stream heads.
    let notifier = Arc::new(JournalNotifier::new());
    let engine = Arc::new(Engine::new(
        database.journal(),
        Stamps::system(),
        notifier.clone(),
        EngineConfig::default(),
    ));
    let user = Owner::User(UserId::parse("1").expect("valid"));
    for r in 0..args.latency_runs {
        let id = format!("lat_{r}");
        engine
            .execute::<Run>(
                &id,
                RunCommand::CreateRun {
                    run_id: RunId::parse(&id)?,
                    thread_id: ThreadId::parse("thread")?,
                    owner: user.clone(),
                    org_id: None,
                    metadata: Map::new(),
                },
                &CommandContext::system("bench"),
            )
            .await?;
        engine
            .execute::<Run>(
                &id,
                RunCommand::StartRun {
                    source: "bench".into(),
                },
                &CommandContext::system("bench"),
            )
            .await?;
    }
    let store = SyncStore::new(database, all_specs());
    let sync = Arc::new(SyncNotifier::new());
    let context = Arc::new(ProjectorContext::new(
        store.clone(),
        database.journal(),
        sync.clone(),
        notifier.appended(),
        RunnerConfig::default(),
    ));
    // Project what exists (including the rebuild phase's journal) before measuring.
    projectors::runner::catch_up_all(&context).await?;
    let stop = CancellationToken::new();
    let runners: Vec<_> = all_projectors()
        .into_iter()
        .map(|p| tokio::spawn(p.run(context.clone(), stop.child_token())))
        .collect();
    let matcher: Arc<Mutex<Matcher<(String, u64)>>> = Arc::new(Mutex::new(Matcher::new()));
    let head = store.topic_states(&[RunSummaries::TOPIC]).await?[0].head_watermark;
    let reader = {
        let store = store.clone();
        let matcher = matcher.clone();
        let stop = stop.clone();
        let mut heads = sync.subscribe();
        tokio::spawn(async move {
            let mut last = head;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = heads.changed() => {}
                }
                let rows = match store
                    .read_stream(RunSummaries::TOPIC, last, 10_000, &OwnerFilter::Any)
                    .await
                {
                    Ok(rows) => rows,
                    Err(_) => continue,
                };
                let now = Instant::now();
                let mut m = matcher.lock().await;
                for row in rows {
                    last = last.max(row.watermark);
                    let Ok(payload) = serde_json::from_str::<Value>(&row.payload) else {
                        continue;
                    };
                    let source = &payload["runtime_source"];
                    let key = (
                        source["aggregate_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        source["seq"].as_u64().unwrap_or_default(),
                    );
                    m.seen(key, now);
                }
            }
        })
    };
    let runs = args.latency_runs as u64;
    let issued = {
        let engine = engine.clone();
        let matcher = matcher.clone();
        paced(args.rate, duration, move |i| {
            let engine = engine.clone();
            let matcher = matcher.clone();
            async move {
                let id = format!("lat_{}", i % runs);
                let command = RunCommand::AppendFrame {
                    frame_id: FrameId::parse(format!("f{i}")).expect("valid"),
                    frame_type: "text_delta".into(),
                    payload: json!({"delta": "x".repeat(64)})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    occurred_at: None,
                    expected_seq: None,
                };
                if let Ok(outcome) = engine
                    .execute::<Run>(&id, command, &CommandContext::system("bench"))
                    .await
                {
                    // The stream row's runtime_source.seq is the event's journal sequence.
                    matcher
                        .lock()
                        .await
                        .acked((id, outcome.version), Instant::now());
                }
            }
        })
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while matcher.lock().await.unseen() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing = matcher.lock().await.unseen();
    stop.cancel();
    let _ = reader.await;
    for r in runners {
        let _ = r.await;
    }
    let ours = matcher.lock().await.histogram.clone();

    println!();
    println!(
        "## commit → visible latency at {} commands/s for {} s",
        args.rate,
        duration.as_secs()
    );
    println!("| path | sent | observed | p50 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| raw INSERT + wake-up + SELECT (baseline) | {sent} | {} | {:.2} | {:.2} | {:.2} |",
        raw.len(),
        percentile_ms(&raw, 0.5),
        percentile_ms(&raw, 0.99),
        raw.max() as f64 / 1000.0
    );
    println!(
        "| engine command → projector → stream row | {issued} | {} | {:.2} | {:.2} | {:.2} |",
        ours.len(),
        percentile_ms(&ours, 0.5),
        percentile_ms(&ours, 0.99),
        ours.max() as f64 / 1000.0
    );
    if missing > 0 {
        println!("{missing} committed commands were not observed within 30 s");
    }
    println!(
        "p99 commit → projected: **{:.2} ms** (target < 50 ms), {:.1}× the raw baseline's p99",
        percentile_ms(&ours, 0.99),
        percentile_ms(&ours, 0.99) / percentile_ms(&raw, 0.99).max(0.001)
    );
    Ok(())
}

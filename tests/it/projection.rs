//! Projectors against real databases: exactly-once projection under concurrent writers,
//! restarting and crashing projector fleets and SIGKILLed `serve` processes; gapless
//! watermarks, consecutive doc versions and read models equal to a fold of the journal; lease
//! exclusivity and fencing; full rebuilds (same read models, a new epoch), version-driven
//! rebuilds that leave the other projectors running, retention, entity repair, the `reproject`
//! command, and lag metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::ids::{FrameId, OrgId, Owner, RequestId, RunId, ThreadId, UserId, WorkerId};
use aggregates::run::{Outcome, Run, RunCommand};
use aggregates::worker::{Worker, WorkerCommand};
use aggregates::Timestamp;
use engine::clock::Stamps;
use engine::journal::GlobalCursor;
use engine::notify::JournalNotifier;
use engine::testing::TestDb;
use engine::{CommandContext, Engine, EngineConfig, Journal};
use projectors::model::{DocOwner, OwnerFilter, ProjectedEvent, Projection, ProjectionError};
use projectors::run_summary::{RunSummaries, RunSummaryDoc};
use projectors::runner::{
    all_projectors, all_specs, catch_up_all, now_ms, spec_of, ProjectorContext, Runner,
    RunnerConfig,
};
use projectors::store::{
    BatchCommit, HydratePage, ReadError, Repaired, StoreError, SyncStore, Target, TopicState,
};
use projectors::SyncNotifier;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::app::{claims, token};
use crate::child::ServeChild;
use crate::support::{on_both_backends, read_all_settled};

on_both_backends!(
    concurrent_writers_and_restarting_projectors_keep_every_invariant,
    a_full_rebuild_gives_the_same_read_models_in_a_new_epoch,
    a_rebuild_cut_by_a_crash_is_finished_by_another_process,
    the_lease_admits_one_projector_and_fences_a_stale_holder,
    a_new_projection_version_rebuilds_that_projector_while_the_others_keep_projecting,
    retention_prunes_rows_raises_the_floor_and_older_cursors_are_stale,
    repair_rewrites_only_a_divergent_document,
    hydration_is_consistent_with_the_stream,
    projection_survives_sigkill_exactly_once,
    the_reproject_command_rebuilds_and_repairs,
);

fn engine_for(db: &TestDb) -> Arc<Engine> {
    Arc::new(Engine::new(
        db.database.journal(),
        Stamps::system(),
        Arc::new(JournalNotifier::new()),
        EngineConfig::default(),
    ))
}

fn store_for(db: &TestDb) -> SyncStore {
    SyncStore::new(&db.database, all_specs())
}

fn config(batch_size: usize) -> RunnerConfig {
    RunnerConfig {
        batch_size,
        poll_interval: Duration::from_millis(20),
        lease_ttl: Duration::from_millis(600),
        ..RunnerConfig::default()
    }
}

/// A projector "process": its own instance id (lease owner), woken by `engine`'s commits.
fn context_for(db: &TestDb, engine: &Engine, batch_size: usize) -> Arc<ProjectorContext> {
    Arc::new(ProjectorContext::new(
        store_for(db),
        db.database.journal(),
        Arc::new(SyncNotifier::new()),
        engine.notifier().appended(),
        config(batch_size),
    ))
}

/// A projector "process" with its own connection pool (and, on SQLite, its own writer lock), so
/// that a crash can be simulated by aborting its tasks and closing its pool: its connections and
/// whatever transactions they had open go away, as when a process dies.
struct Fleet {
    database: engine::Database,
    token: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    async fn start(db: &TestDb, engine: &Engine, batch_size: usize) -> Fleet {
        let database = engine::Database::connect(&crate::app::database_config(db))
            .await
            .unwrap();
        let context = Arc::new(ProjectorContext::new(
            SyncStore::new(&database, all_specs()),
            database.journal(),
            Arc::new(SyncNotifier::new()),
            engine.notifier().appended(),
            config(batch_size),
        ));
        let token = CancellationToken::new();
        let handles = start_fleet(&context, &token);
        Fleet {
            database,
            token,
            handles,
        }
    }

    /// Graceful: the runners finish their batch and release their leases.
    async fn stop(self) {
        self.token.cancel();
        for h in self.handles {
            let _ = h.await;
        }
        self.database.close().await;
    }

    /// A crash: tasks aborted wherever they are, connections dropped, leases left to expire.
    async fn crash(self) {
        for h in &self.handles {
            h.abort();
        }
        for h in self.handles {
            let _ = h.await;
        }
        self.database.close().await;
    }
}

/// Runs every projector of `context` until `token` is cancelled (or the handles are aborted).
fn start_fleet(
    context: &Arc<ProjectorContext>,
    token: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    all_projectors()
        .into_iter()
        .map(|p| tokio::spawn(p.run(context.clone(), token.child_token())))
        .collect()
}

/// Projects everything with a fresh projector process, waiting for any lease a dead process
/// left behind to expire.
async fn settle(db: &TestDb, engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let context = context_for(db, engine, 500);
        match catch_up_all(&context).await {
            Ok(_) => return,
            Err(projectors::runner::RunnerError::LeaseHeld(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("catch up: {error}"),
        }
    }
}

fn ctx() -> CommandContext {
    CommandContext::system("test")
}

fn owner_of(k: usize) -> Owner {
    Owner::User(UserId::parse(format!("u{}", k % 3)).unwrap())
}

/// One random command against a few shared runs and workers (many are rejected: illegal
/// transitions, conflicting frames; that is part of the load).
async fn random_command(engine: &Engine, rng: &mut StdRng, tag: &str, i: usize) {
    let frame_payload = |text: String| -> Map<String, Value> {
        json!({"text": text}).as_object().cloned().unwrap()
    };
    if rng.gen_bool(0.6) {
        let k = rng.gen_range(0..6);
        let run = format!("run_{k}");
        let command = match rng.gen_range(0..10) {
            0 => RunCommand::CreateRun {
                run_id: RunId::parse(&run).unwrap(),
                thread_id: ThreadId::parse(format!("thread_{k}")).unwrap(),
                owner: owner_of(k),
                org_id: (k % 2 == 0).then(|| OrgId::parse("org_even").unwrap()),
                metadata: Map::new(),
            },
            1 => RunCommand::StartRun {
                source: "runtime".into(),
            },
            2..=6 => RunCommand::AppendFrame {
                frame_id: FrameId::parse(format!("{tag}_{i}")).unwrap(),
                frame_type: if rng.gen_bool(0.2) {
                    "tool_call".into()
                } else {
                    "text_delta".into()
                },
                payload: frame_payload(format!("{tag} {i}")),
                occurred_at: None,
                expected_seq: None,
            },
            7 => RunCommand::RequestCancel {
                reason: "test".into(),
                requested_by: tag.into(),
            },
            _ => RunCommand::FinishRun {
                outcome: [Outcome::Succeeded, Outcome::Failed, Outcome::Canceled]
                    [rng.gen_range(0..3)]
                .clone(),
                reason_class: None,
                reason: None,
                error_code: None,
            },
        };
        let _ = engine.execute::<Run>(&run, command, &ctx()).await;
    } else {
        let k = rng.gen_range(0..4);
        let worker = format!("worker_{k}");
        let command = match rng.gen_range(0..8) {
            0 | 1 => WorkerCommand::RegisterWorker {
                worker_id: WorkerId::parse(&worker).unwrap(),
                owner: owner_of(k + 1),
                org_id: None,
                adapter: "desktop".into(),
                workspace_ref: None,
                codex_home_ref: None,
                metadata: Map::new(),
                lease_ttl_ms: 60_000,
            },
            2 => WorkerCommand::Heartbeat {
                lease_ttl_ms: Some(60_000),
            },
            3 | 4 => WorkerCommand::ReportEvent {
                event_type: "worker.turn".into(),
                payload: frame_payload(format!("{tag} {i}")),
            },
            5 => WorkerCommand::RecordRequest {
                request_id: RequestId::parse(format!("{tag}_{i}")).unwrap(),
                method: "turn/start".into(),
                params: json!({"i": i}),
            },
            6 => WorkerCommand::ReportEvent {
                event_type: "worker.stopped".into(),
                payload: Map::new(),
            },
            _ => WorkerCommand::RequestStop {
                reason: "test".into(),
            },
        };
        let _ = engine.execute::<Worker>(&worker, command, &ctx()).await;
    }
}

/// Every projector's invariants, with the projection caught up:
/// - the stream of each topic holds watermarks `floor+1 ..= head` with no gap or duplicate;
/// - each document's stream rows carry versions `1, 2, …, k` (consecutive from the floor on);
/// - each current document equals its last stream row (version, hash, watermark);
/// - the documents equal a fold of the whole journal (content and version).
async fn assert_invariants(db: &TestDb, store: &SyncStore) {
    let events = read_all_settled(&db.database.journal()).await;
    for projector in all_projectors() {
        let spec = projector.spec();
        let drift = projector.compare(store, &events).await.unwrap();
        assert!(drift.is_empty(), "{}: {drift:#?}", spec.name);
        let state: TopicState = store
            .topic_states(&[spec.topic])
            .await
            .unwrap()
            .pop()
            .unwrap();
        let rows = store
            .all_rows(spec.topic, state.retention_floor)
            .await
            .unwrap();
        let watermarks: Vec<u64> = rows.iter().map(|r| r.watermark).collect();
        let expected: Vec<u64> = (state.retention_floor + 1..=state.head_watermark).collect();
        assert_eq!(watermarks, expected, "{}: watermarks", spec.topic);
        let mut last: HashMap<&str, &projectors::store::StreamRow> = HashMap::new();
        for row in &rows {
            match last.get(row.doc_key.as_str()) {
                Some(prev) => assert_eq!(
                    row.doc_version,
                    prev.doc_version + 1,
                    "{}: versions of {}",
                    spec.topic,
                    row.doc_key
                ),
                None if state.epoch == 1 && state.retention_floor == 0 => {
                    assert_eq!(row.doc_version, 1, "{}: first version", row.doc_key)
                }
                None => {}
            }
            last.insert(&row.doc_key, row);
        }
        if state.epoch == 1 && state.retention_floor == 0 {
            let docs = store.all_docs(&spec).await.unwrap();
            assert_eq!(
                docs.len(),
                last.len(),
                "{}: one document per key",
                spec.topic
            );
            for doc in docs {
                let row = last[doc.doc_key.as_str()];
                assert_eq!(
                    (doc.doc_version, &doc.payload_hash, doc.watermark),
                    (row.doc_version, &row.payload_hash, row.watermark),
                    "{}: current document vs its last row",
                    doc.doc_key
                );
            }
        }
    }
}

async fn concurrent_writers_and_restarting_projectors_keep_every_invariant(db: &TestDb) {
    let engine = engine_for(db);
    // Two projector processes compete for the leases while six writers commit; every 150 ms
    // one of them is stopped (gracefully, or crashed mid-batch) and replaced.
    let mut fleets = vec![
        Fleet::start(db, &engine, 7).await,
        Fleet::start(db, &engine, 7).await,
    ];
    // Writers keep going until the fleets have been replaced a few times, however fast the
    // journal commits (at least 150 commands each, at most 5,000).
    const MIN_RESTARTS: usize = 4;
    let restarted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let engine = engine.clone();
            let restarted = restarted.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(0x5eed + w);
                let mut i = 0;
                while i < 150
                    || (restarted.load(std::sync::atomic::Ordering::Relaxed) < MIN_RESTARTS
                        && i < 5_000)
                {
                    random_command(&engine, &mut rng, &format!("w{w}"), i).await;
                    i += 1;
                }
            })
        })
        .collect();
    let mut chaos = StdRng::seed_from_u64(7);
    let mut restarts = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let victim = fleets.remove(chaos.gen_range(0..fleets.len()));
        if chaos.gen_bool(0.5) {
            victim.stop().await;
        } else {
            victim.crash().await;
        }
        fleets.push(Fleet::start(db, &engine, chaos.gen_range(1..50)).await);
        restarts += 1;
        restarted.store(restarts, std::sync::atomic::Ordering::Relaxed);
    }
    for w in writers {
        w.await.unwrap();
    }
    for fleet in fleets {
        fleet.stop().await;
    }
    assert!(
        restarts >= MIN_RESTARTS,
        "the fleets must have been restarted while writing"
    );
    settle(db, &engine).await;
    let store = store_for(db);
    assert_invariants(db, &store).await;
    let runs = store.all_docs(&spec_of::<RunSummaries>()).await.unwrap();
    assert!(!runs.is_empty(), "the load created runs");
}

async fn a_full_rebuild_gives_the_same_read_models_in_a_new_epoch(db: &TestDb) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(11);
    for i in 0..300 {
        random_command(&engine, &mut rng, "r", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    assert_invariants(db, &store).await;
    let docs_of = |store: SyncStore| async move {
        let mut all = Vec::new();
        for spec in all_specs() {
            for doc in store.all_docs(&spec).await.unwrap() {
                all.push((
                    spec.topic,
                    doc.doc_key,
                    doc.doc_version,
                    doc.payload_hash,
                    doc.owner,
                ));
            }
        }
        all
    };
    let before = docs_of(store.clone()).await;
    let states_before = store
        .topic_states(&all_specs().iter().map(|s| s.topic).collect::<Vec<_>>())
        .await
        .unwrap();
    for spec in all_specs() {
        assert!(store.request_rebuild(spec.name, now_ms()).await.unwrap());
    }
    settle(db, &engine).await;
    assert_eq!(
        docs_of(store.clone()).await,
        before,
        "rebuild == incremental"
    );
    for before in states_before {
        let after = store
            .topic_states(&[&before.topic])
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(after.epoch, 2, "{}", before.topic);
        assert_eq!(after.epoch_start, before.head_watermark + 1);
        assert_eq!(after.retention_floor, after.epoch_start);
        assert_eq!(
            after.head_watermark, after.epoch_start,
            "only the epoch marker"
        );
        // Every cursor of the old epoch, the old head included, is stale.
        for cursor in [0, before.head_watermark] {
            assert!(matches!(
                store
                    .read_stream(&before.topic, cursor, 10, &OwnerFilter::Any)
                    .await,
                Err(ReadError::Stale { .. })
            ));
        }
        // The old rows are gone; the marker holds the epoch's first watermark, owned by
        // nobody, below every readable cursor.
        let rows = stream_table_rows(db, &before.topic).await;
        assert_eq!(
            rows,
            vec![(
                after.epoch_start as i64,
                format!("runtime/sync_epoch:{}", before.topic),
                None
            )]
        );
        assert_eq!(store.all_rows(&before.topic, 0).await.unwrap(), vec![]);
    }
    // Projection goes on in the new epoch from the marker.
    let run = engine
        .execute::<Run>(
            "run_after",
            RunCommand::CreateRun {
                run_id: RunId::parse("run_after").unwrap(),
                thread_id: ThreadId::parse("t").unwrap(),
                owner: owner_of(0),
                org_id: None,
                metadata: Map::new(),
            },
            &ctx(),
        )
        .await;
    assert!(run.is_ok());
    settle(db, &engine).await;
    let state = store
        .topic_states(&[RunSummaries::TOPIC])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let rows = store
        .all_rows(RunSummaries::TOPIC, state.epoch_start)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].watermark, state.epoch_start + 1);
    assert_eq!(rows[0].doc_key, "runtime/run_summary:run_after");
    let events = read_all_settled(&db.database.journal()).await;
    for projector in all_projectors() {
        assert_eq!(projector.compare(&store, &events).await.unwrap(), vec![]);
    }
}

/// `(watermark, doc_key, owner_user_id)` of every stored row of `topic`, straight from the table.
async fn stream_table_rows(db: &TestDb, topic: &str) -> Vec<(i64, String, Option<String>)> {
    let sql = |table: &str| {
        format!(
            "SELECT watermark, doc_key, owner_user_id FROM {table} WHERE topic = $1 ORDER BY watermark"
        )
    };
    match &db.database {
        engine::Database::Postgres(pool) => sqlx::query_as(&sql("runtime.sync_stream_events"))
            .bind(topic)
            .fetch_all(pool)
            .await
            .unwrap(),
        engine::Database::Sqlite { pool, .. } => sqlx::query_as(&sql("runtime_sync_stream_events"))
            .bind(topic)
            .fetch_all(pool)
            .await
            .unwrap(),
    }
}

async fn a_rebuild_cut_by_a_crash_is_finished_by_another_process(db: &TestDb) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(23);
    for i in 0..600 {
        random_command(&engine, &mut rng, "k", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    let snapshot = |store: SyncStore| async move {
        let mut all = Vec::new();
        for spec in all_specs() {
            for doc in store.all_docs(&spec).await.unwrap() {
                all.push((doc.doc_key, doc.doc_version, doc.payload_hash, doc.owner));
            }
        }
        all
    };
    let before = snapshot(store.clone()).await;
    for spec in all_specs() {
        store.request_rebuild(spec.name, now_ms()).await.unwrap();
    }
    // A process rebuilding in tiny batches is crashed halfway through.
    let doomed = Fleet::start(db, &engine, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let checkpoint = store.checkpoint(RunSummaries::NAME).await.unwrap().unwrap();
        if checkpoint.rebuild.as_ref().is_some_and(|r| r.events > 60) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild did not progress: {checkpoint:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.crash().await;
    let halfway = store.checkpoint(RunSummaries::NAME).await.unwrap().unwrap();
    assert!(halfway.rebuild.is_some(), "crashed mid-rebuild");
    // Meanwhile more commands arrive; another process takes the leases over and finishes.
    for i in 0..50 {
        random_command(&engine, &mut rng, "k2", i).await;
    }
    let survivor = Fleet::start(db, &engine, 17).await;
    loop {
        let checkpoints = store.checkpoints().await.unwrap();
        if checkpoints
            .iter()
            .all(|c| c.rebuild.is_none() && !c.rebuild_requested)
        {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "the survivor did not finish the rebuild"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    survivor.stop().await;
    settle(db, &engine).await;
    let after = snapshot(store.clone()).await;
    assert!(after.len() >= before.len());
    let events = read_all_settled(&db.database.journal()).await;
    for projector in all_projectors() {
        assert_eq!(
            projector.compare(&store, &events).await.unwrap(),
            vec![],
            "{}",
            projector.spec().name
        );
        let state = store
            .topic_states(&[projector.spec().topic])
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(state.epoch, 2, "one rebuild, one new epoch");
    }
}

async fn the_lease_admits_one_projector_and_fences_a_stale_holder(db: &TestDb) {
    let store = store_for(db);
    let spec = spec_of::<RunSummaries>();
    let now = now_ms();
    store.register(&spec, now).await.unwrap();
    let a = store
        .try_acquire(spec.name, "a", now, 10_000)
        .await
        .unwrap();
    assert!(a.is_some(), "a free lease is taken");
    assert!(
        store
            .try_acquire(spec.name, "b", now, 10_000)
            .await
            .unwrap()
            .is_none(),
        "a held lease is not"
    );
    assert!(
        store
            .try_acquire(spec.name, "a", now, 10_000)
            .await
            .unwrap()
            .is_some(),
        "the holder renews"
    );
    let commit = |owner: &'static str, from: GlobalCursor, to: GlobalCursor| {
        let store = store.clone();
        let spec = spec.clone();
        async move {
            store
                .commit(BatchCommit {
                    spec: &spec,
                    target: Target::Live,
                    owner,
                    from,
                    to,
                    events: 1,
                    rows: vec![projectors::store::NewRow {
                        doc_key: "runtime/run_summary:x".into(),
                        doc_version: 1,
                        payload: "{}".into(),
                        payload_hash: "sha256:x".into(),
                        owner: DocOwner::user("1"),
                        projected_at_ms: 0,
                    }],
                    docs: vec![],
                    now_ms: now_ms(),
                    lease_ttl_ms: 10_000,
                })
                .await
        }
    };
    let first = GlobalCursor::new(0, 1);
    commit("a", GlobalCursor::START, first).await.unwrap();
    assert!(
        matches!(
            commit("b", first, GlobalCursor::new(0, 2)).await,
            Err(StoreError::LeaseLost(_))
        ),
        "a process without the lease cannot commit"
    );
    assert!(
        matches!(
            commit("a", GlobalCursor::START, first).await,
            Err(StoreError::CursorMoved(_))
        ),
        "a batch from a stale cursor is refused (no double projection)"
    );
    // a stops renewing; once its lease expired, b takes over, and a is fenced off.
    let later = now_ms() + 20_000;
    assert!(store
        .try_acquire(spec.name, "b", later, 10_000)
        .await
        .unwrap()
        .is_some());
    assert!(matches!(
        commit("a", first, GlobalCursor::new(0, 2)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let state = store
        .topic_states(&[spec.topic])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(state.head_watermark, 1, "refused commits allocated nothing");
    // Graceful release lets anyone take it at once.
    store.release(spec.name, "b").await.unwrap();
    assert!(store
        .try_acquire(spec.name, "c", now_ms(), 1_000)
        .await
        .unwrap()
        .is_some());
}

/// Run summaries at projection version 2: what a deployment with a changed read model runs.
struct RunSummariesV2;

impl Projection for RunSummariesV2 {
    type Doc = RunSummaryDoc;
    const NAME: &'static str = RunSummaries::NAME;
    const TOPIC: &'static str = RunSummaries::TOPIC;
    const TABLE: &'static str = RunSummaries::TABLE;
    const VERSION: u32 = 2;
    const AGGREGATE_TYPES: &'static [&'static str] = RunSummaries::AGGREGATE_TYPES;

    fn upcast(
        event: &cqrs_es::persist::SerializedEvent,
    ) -> Option<cqrs_es::persist::SerializedEvent> {
        RunSummaries::upcast(event)
    }

    fn doc_key(event: &cqrs_es::persist::SerializedEvent) -> Option<String> {
        RunSummaries::doc_key(event)
    }

    fn apply(
        slot: &mut Option<RunSummaryDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let changed = RunSummaries::apply(slot, event)?;
        if let Some(doc) = slot.as_mut() {
            doc.projection_version = 2;
        }
        Ok(changed)
    }

    fn owner(doc: &RunSummaryDoc) -> DocOwner {
        RunSummaries::owner(doc)
    }

    fn projected_at(doc: &RunSummaryDoc) -> Timestamp {
        RunSummaries::projected_at(doc)
    }
}

async fn a_new_projection_version_rebuilds_that_projector_while_the_others_keep_projecting(
    db: &TestDb,
) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..400 {
        random_command(&engine, &mut rng, "v", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    // The worker projectors keep running live in their own process...
    let workers_ctx = context_for(db, &engine, 50);
    let token = CancellationToken::new();
    let worker_runners: Vec<_> = all_projectors()
        .into_iter()
        .filter(|p| p.spec().name != RunSummaries::NAME)
        .map(|p| tokio::spawn(p.run(workers_ctx.clone(), token.child_token())))
        .collect();
    // ...while run summaries are rebuilt at version 2, one event per transaction.
    let rebuild_ctx = context_for(db, &engine, 1);
    let rebuild = tokio::spawn(Runner::<RunSummariesV2>::new(rebuild_ctx).catch_up());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let checkpoint = store.checkpoint(RunSummaries::NAME).await.unwrap().unwrap();
        if checkpoint.rebuild.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A worker event committed during the rebuild is projected during the rebuild.
    engine
        .execute::<Worker>(
            "worker_during",
            WorkerCommand::RegisterWorker {
                worker_id: WorkerId::parse("worker_during").unwrap(),
                owner: owner_of(0),
                org_id: None,
                adapter: "desktop".into(),
                workspace_ref: None,
                codex_home_ref: None,
                metadata: Map::new(),
                lease_ttl_ms: 60_000,
            },
            &ctx(),
        )
        .await
        .unwrap();
    let worker_spec = spec_of::<projectors::worker_summary::WorkerSummaries>();
    loop {
        let docs = store
            .load_docs(
                &worker_spec,
                Target::Live,
                &["runtime/codex_worker_summary:worker_during".to_owned()],
            )
            .await
            .unwrap();
        if !docs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker summaries stalled during the rebuild"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let checkpoint = store.checkpoint(RunSummaries::NAME).await.unwrap().unwrap();
    assert!(
        checkpoint.rebuild.is_some(),
        "the worker document arrived while run summaries were still rebuilding"
    );
    rebuild.await.unwrap().unwrap();
    token.cancel();
    for r in worker_runners {
        r.await.unwrap();
    }
    let checkpoint = store.checkpoint(RunSummaries::NAME).await.unwrap().unwrap();
    assert_eq!(checkpoint.projection_version, 2);
    assert!(checkpoint.rebuild.is_none());
    let docs = store.all_docs(&spec_of::<RunSummaries>()).await.unwrap();
    assert!(!docs.is_empty());
    for doc in docs {
        let payload: Value = serde_json::from_str(&doc.payload).unwrap();
        assert_eq!(payload["projection_version"], 2, "{}", doc.doc_key);
    }
    let states = store
        .topic_states(&[RunSummaries::TOPIC, worker_spec.topic])
        .await
        .unwrap();
    assert_eq!((states[0].epoch, states[1].epoch), (2, 1));
}

async fn retention_prunes_rows_raises_the_floor_and_older_cursors_are_stale(db: &TestDb) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(5);
    for i in 0..200 {
        random_command(&engine, &mut rng, "p", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    let summaries = spec_of::<RunSummaries>();
    let events_spec = spec_of::<projectors::worker_events::WorkerEvents>();
    let run_docs = store.all_docs(&summaries).await.unwrap().len();
    let event_docs = store.all_docs(&events_spec).await.unwrap().len();
    assert!(run_docs > 0 && event_docs > 0);
    let head = |topic: &'static str| {
        let store = store.clone();
        async move { store.topic_states(&[topic]).await.unwrap().pop().unwrap() }
    };
    let before = head(summaries.topic).await;
    // Everything inserted before "one second from now" is older than the window: prune it in
    // chunks of 7 rows.
    let cutoff = now_ms() + 1_000;
    let mut pruned = 0;
    loop {
        let outcome = store.prune(&summaries, cutoff, 7, now_ms()).await.unwrap();
        pruned += outcome.rows;
        if outcome.rows == 0 {
            break;
        }
        assert!(outcome.rows <= 7);
    }
    let after = head(summaries.topic).await;
    assert_eq!(pruned, before.head_watermark);
    assert_eq!(after.retention_floor, before.head_watermark);
    assert_eq!(after.head_watermark, before.head_watermark);
    assert!(matches!(
        store
            .read_stream(
                summaries.topic,
                after.retention_floor - 1,
                10,
                &OwnerFilter::Any
            )
            .await,
        Err(ReadError::Stale { .. })
    ));
    assert_eq!(
        store
            .read_stream(
                summaries.topic,
                after.retention_floor,
                10,
                &OwnerFilter::Any
            )
            .await
            .unwrap(),
        vec![],
        "a cursor at the floor is fine"
    );
    // Current documents survive; event histories are pruned with their rows.
    assert_eq!(store.all_docs(&summaries).await.unwrap().len(), run_docs);
    while store
        .prune(&events_spec, cutoff, 1_000, now_ms())
        .await
        .unwrap()
        .docs
        > 0
    {}
    assert_eq!(store.all_docs(&events_spec).await.unwrap().len(), 0);
    // New changes continue after the floor, gapless.
    for i in 0..20 {
        random_command(&engine, &mut rng, "q", i).await;
    }
    settle(db, &engine).await;
    let rows = store
        .all_rows(summaries.topic, after.retention_floor)
        .await
        .unwrap();
    let state = head(summaries.topic).await;
    assert_eq!(
        rows.iter().map(|r| r.watermark).collect::<Vec<_>>(),
        (after.retention_floor + 1..=state.head_watermark).collect::<Vec<_>>()
    );
}

async fn repair_rewrites_only_a_divergent_document(db: &TestDb) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(9);
    for i in 0..150 {
        random_command(&engine, &mut rng, "x", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    let spec = spec_of::<RunSummaries>();
    let doc = store.all_docs(&spec).await.unwrap().remove(0);
    let run_id = doc
        .doc_key
        .trim_start_matches("runtime/run_summary:")
        .to_owned();
    let context = context_for(db, &engine, 100);
    let projector = all_projectors().remove(0);
    assert_eq!(projector.spec().name, RunSummaries::NAME);
    let outcome = projector
        .repair(context.clone(), run_id.clone())
        .await
        .unwrap();
    assert_eq!(outcome, vec![(doc.doc_key.clone(), Repaired::Unchanged)]);
    // Damage the stored document behind the projector's back.
    let table = match &db.database {
        engine::Database::Postgres(_) => "runtime.sync_run_summaries",
        engine::Database::Sqlite { .. } => "runtime_sync_run_summaries",
    };
    let sql = format!(
        "UPDATE {table} SET payload = '{{\"damaged\":true}}', payload_hash = 'sha256:bad' WHERE doc_key = $1"
    );
    match &db.database {
        engine::Database::Postgres(pool) => {
            sqlx::query(&sql)
                .bind(&doc.doc_key)
                .execute(pool)
                .await
                .unwrap();
        }
        engine::Database::Sqlite { pool, .. } => {
            sqlx::query(&sql)
                .bind(&doc.doc_key)
                .execute(pool)
                .await
                .unwrap();
        }
    }
    let head_before = store
        .topic_states(&[spec.topic])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .head_watermark;
    let outcome = projector
        .repair(context.clone(), run_id.clone())
        .await
        .unwrap();
    assert_eq!(
        outcome,
        vec![(
            doc.doc_key.clone(),
            Repaired::Written {
                doc_version: doc.doc_version + 1,
                watermark: head_before + 1
            }
        )]
    );
    let repaired = store
        .load_docs(&spec, Target::Live, std::slice::from_ref(&doc.doc_key))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        repaired.payload_hash, doc.payload_hash,
        "the journal's content again"
    );
    assert_eq!(repaired.payload, doc.payload);
    let rows = store.all_rows(spec.topic, head_before).await.unwrap();
    assert_eq!(rows.len(), 1, "one stream row announces the repair");
    assert_eq!(rows[0].doc_version, doc.doc_version + 1);
    assert_eq!(
        projector.repair(context, run_id).await.unwrap(),
        vec![(doc.doc_key.clone(), Repaired::Unchanged)]
    );
}

async fn hydration_is_consistent_with_the_stream(db: &TestDb) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(13);
    for i in 0..200 {
        random_command(&engine, &mut rng, "h", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    for spec in all_specs() {
        let rows = store.all_rows(spec.topic, 0).await.unwrap();
        for principal in ["u0", "u1", "u2", "nobody"] {
            let filter = OwnerFilter::Principal {
                user_id: Some(principal.to_owned()),
                guest_scope: None,
                org_id: None,
            };
            let hydration = store
                .hydrate(spec.topic, None, HydratePage::ALL, &filter)
                .await
                .unwrap();
            // The documents are exactly the last row of each key the principal owns, up to
            // the watermark the hydration names.
            let mut expected: HashMap<&str, &projectors::store::StreamRow> = HashMap::new();
            for row in rows.iter().filter(|r| r.watermark <= hydration.watermark) {
                if filter.matches(&row.owner) {
                    expected.insert(&row.doc_key, row);
                }
            }
            assert_eq!(
                hydration.docs.len(),
                expected.len(),
                "{} {principal}",
                spec.topic
            );
            for doc in &hydration.docs {
                let row = expected[doc.doc_key.as_str()];
                assert_eq!(
                    (doc.doc_version, &doc.payload_hash, doc.watermark),
                    (row.doc_version, &row.payload_hash, row.watermark)
                );
                assert_eq!(doc.owner.user_id.as_deref(), Some(principal));
            }
            // The stream, filtered the same way, holds only the principal's rows.
            let stream = store
                .read_stream(spec.topic, 0, 10_000, &filter)
                .await
                .unwrap();
            assert!(stream.iter().all(|r| filter.matches(&r.owner)));
            assert_eq!(
                stream.len(),
                rows.iter().filter(|r| filter.matches(&r.owner)).count()
            );
            // One document by key.
            if let Some(doc) = hydration.docs.first() {
                let one = store
                    .hydrate(spec.topic, Some(&doc.doc_key), HydratePage::ALL, &filter)
                    .await
                    .unwrap();
                assert_eq!(one.docs, vec![doc.clone()]);
            }
        }
    }
    // A tenant bound principal sees only its tenant's runs (even runs are in org_even).
    let filter = OwnerFilter::Principal {
        user_id: Some("u0".into()),
        guest_scope: None,
        org_id: Some("org_odd".into()),
    };
    let hydration = store
        .hydrate(RunSummaries::TOPIC, None, HydratePage::ALL, &filter)
        .await
        .unwrap();
    assert!(hydration
        .docs
        .iter()
        .all(|d| d.owner.org_id.as_deref() != Some("org_even")));
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Option<u16> {
    let response = http
        .post(format!("{base}{path}"))
        .header("x-oa-runtime-signature", token(&claims()))
        .header("x-oa-user-id", "1")
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

async fn projection_survives_sigkill_exactly_once(db: &TestDb) {
    let data_dir = db
        .data_dir
        .clone()
        .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(17);
    let mut acknowledged = 0;
    for round in 0..3 {
        // Tiny batches and a short lease: kills land mid-projection.
        let child = ServeChild::start(
            db,
            &data_dir,
            &[
                "--projector-batch-size",
                "3",
                "--projector-lease-ttl",
                "500ms",
            ],
        );
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let http = http.clone();
                let base = child.base.clone();
                tokio::spawn(async move {
                    let mut acked = 0;
                    for i in 0.. {
                        let run = format!("kill_run_{}", (c + i) % 5);
                        let frame = format!("r{round}c{c}i{i}");
                        let (path, body) = if i % 4 == 3 {
                            (
                                "/internal/v1/codex/workers".to_owned(),
                                json!({"worker_id": format!("kill_worker_{c}"), "adapter": "desktop"}),
                            )
                        } else {
                            (
                                format!("/internal/v1/runs/{run}/frames"),
                                json!({"thread_id": "thread_1", "frame_id": frame,
                                       "type": "text_delta", "payload": {"delta": frame}}),
                            )
                        };
                        match post(&http, &base, &path, body).await {
                            Some(status) if (200..300).contains(&status) => acked += 1,
                            Some(status) => panic!("unexpected status {status}"),
                            None => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..1_200))).await;
        child.kill_9();
        for c in clients {
            acknowledged += c.await.unwrap();
        }
        drop(child);
    }
    assert!(acknowledged > 20, "the load ran ({acknowledged} commands)");
    // A last start projects whatever the killed ones left, then stops cleanly.
    let child = ServeChild::start(db, &data_dir, &["--projector-lease-ttl", "500ms"]);
    let store = store_for(db);
    let journal = db.database.journal();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let checkpoints = store.checkpoints().await.unwrap();
        let mut behind = 0;
        for c in &checkpoints {
            behind += journal.count_after(c.cursor, 1_000).await.unwrap();
        }
        // Cursors of read models without changes are persisted lazily; run summaries always
        // change, so their cursor tells when the child is done.
        if let Some(runs) = checkpoints
            .iter()
            .find(|c| c.projector == RunSummaries::NAME)
        {
            if journal.count_after(runs.cursor, 1).await.unwrap() == 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted child did not catch up ({behind} behind)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.terminate().await.success());
    let engine = engine_for(db);
    settle(db, &engine).await;
    assert_invariants(db, &store).await;
}

async fn the_reproject_command_rebuilds_and_repairs(db: &TestDb) {
    let engine = engine_for(db);
    let mut rng = StdRng::seed_from_u64(21);
    for i in 0..120 {
        random_command(&engine, &mut rng, "c", i).await;
    }
    settle(db, &engine).await;
    let store = store_for(db);
    let spec = spec_of::<RunSummaries>();
    let before = store.all_docs(&spec).await.unwrap();
    let reproject = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_openagents-runtime"));
        command
            .arg("reproject")
            .args(args)
            .env_remove("DATABASE_URL");
        match (&db.url, &db.data_dir) {
            (Some(url), _) => {
                command.args(["--database-url", url]);
            }
            (None, Some(dir)) => {
                command.args(["--data-dir", dir.to_str().unwrap()]);
            }
            _ => unreachable!(),
        }
        let output = command.output().expect("run reproject");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = reproject(&["--all", "--projector", "run_summaries"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("run_summaries: rebuilt here"), "{out}");
    let state = store
        .topic_states(&[spec.topic])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(state.epoch, 2);
    let after = store.all_docs(&spec).await.unwrap();
    let strip = |docs: &[projectors::store::DocRow]| -> Vec<(String, u64, String)> {
        docs.iter()
            .map(|d| (d.doc_key.clone(), d.doc_version, d.payload_hash.clone()))
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));
    let (ok, out, _) = reproject(&["--status"]);
    assert!(ok);
    assert!(
        out.contains("run_summaries") && out.contains("epoch 2"),
        "{out}"
    );
    let run_id = before[0].doc_key.trim_start_matches("runtime/run_summary:");
    let (ok, out, err) = reproject(&["--run-id", run_id]);
    assert!(ok, "{err}");
    assert!(out.contains("matches the journal"), "{out}");
    let (ok, _, err) = reproject(&["--all", "--projector", "nope"]);
    assert!(!ok);
    assert!(err.contains("unknown projector"), "{err}");
    let (ok, _, err) = reproject(&[]);
    assert!(!ok, "one of --all, --run-id, … is required");
    assert!(err.contains("required"), "{err}");
    let (ok, _, err) = reproject(&["--run-id", "no_such_run"]);
    assert!(!ok);
    assert!(err.contains("no events of no_such_run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_metrics_are_published_per_projector() {
    let db = TestDb::sqlite().await;
    let app = crate::app::spawn_app_with_sync(&db).await;
    app.running_run("run_metrics").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = app
            .http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap();
        let text = metrics.text().await.unwrap();
        let ready = all_specs().iter().all(|s| {
            text.contains(&format!(
                "runtime_projector_events_behind{{projector=\"{}\"}}",
                s.name
            )) && text.contains(&format!(
                "runtime_projector_seconds_behind{{projector=\"{}\"}}",
                s.name
            )) && text.contains(&format!(
                "runtime_projector_leader{{projector=\"{}\"}} 1",
                s.name
            ))
        }) && text.contains("runtime_projection_lag_seconds_bucket")
            && text.contains("runtime_projector_changes_total{projector=\"run_summaries\"}");
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "metrics missing:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This process holds every lease.
    let store = app.sync.as_ref().expect("the sync lane runs").store.clone();
    let checkpoints = store.checkpoints().await.unwrap();
    assert_eq!(checkpoints.len(), all_specs().len());
    let owners: std::collections::BTreeSet<_> =
        checkpoints.iter().map(|c| c.lease_owner.clone()).collect();
    assert_eq!(owners.len(), 1);
    assert!(owners
        .iter()
        .next()
        .unwrap()
        .as_deref()
        .is_some_and(|o| o.starts_with(&format!("{}-", std::process::id()))));
    app.shutdown().await.unwrap();
    // A graceful shutdown gives the leases back (the server closed its pool: open another).
    let database = engine::Database::connect(&crate::app::database_config(&db))
        .await
        .unwrap();
    let store = SyncStore::new(&database, all_specs());
    let checkpoints = store.checkpoints().await.unwrap();
    assert!(
        checkpoints.iter().all(|c| c.lease_owner.is_none()),
        "{checkpoints:?}"
    );
    db.cleanup().await;
}

/// Two `serve` processes on one PostgreSQL database: one holds every projector lease; when it
/// is killed, the other takes over within seconds and projects what is committed through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_node_takes_the_projectors_over_when_the_leader_dies() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = ["--projector-lease-ttl", "1s"];
    let first = ServeChild::start(&db, dir.path(), &args);
    let store = store_for(&db);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &first.base, "/internal/v1/runs/ha_run/frames",
             json!({"thread_id": "thread_1", "frame_id": "f0", "type": "text_delta", "payload": {"delta": "a"}}))
            .await,
        Some(202)
    );
    let holders = |store: SyncStore| async move {
        store
            .checkpoints()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.lease_owner.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let held_by = |pid: u32, owners: &[String]| {
        owners.len() == all_specs().len()
            && owners.iter().all(|o| o.starts_with(&format!("{pid}-")))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !held_by(first.pid(), &holders(store.clone()).await) {
        assert!(
            Instant::now() < deadline,
            "the first node never took the leases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = ServeChild::start(&db, dir.path(), &args);
    // The standby serves commands but does not take the leases while the leader lives.
    assert_eq!(
        post(&http, &second.base, "/internal/v1/runs/ha_run/frames",
             json!({"thread_id": "thread_1", "frame_id": "f1", "type": "text_delta", "payload": {"delta": "b"}}))
            .await,
        Some(202)
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(held_by(first.pid(), &holders(store.clone()).await));
    first.kill_9();
    let killed_at = Instant::now();
    while !held_by(second.pid(), &holders(store.clone()).await) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "the standby did not take over: {:?}",
            holders(store.clone()).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed_at.elapsed();
    assert!(takeover < Duration::from_secs(5), "took {takeover:?}");
    assert_eq!(
        post(&http, &second.base, "/internal/v1/runs/ha_run/frames",
             json!({"thread_id": "thread_1", "frame_id": "f2", "type": "text_delta", "payload": {"delta": "c"}}))
            .await,
        Some(202)
    );
    let spec = spec_of::<RunSummaries>();
    loop {
        let docs = store
            .load_docs(
                &spec,
                Target::Live,
                &["runtime/run_summary:ha_run".to_owned()],
            )
            .await
            .unwrap();
        if docs
            .first()
            .is_some_and(|d| d.payload.contains("\"latest_seq\":3"))
        {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "not projected after takeover: {docs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.terminate().await.success());
    let engine = engine_for(&db);
    settle(&db, &engine).await;
    assert_invariants(&db, &store).await;
    db.cleanup().await;
}

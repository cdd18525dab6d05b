//! Khala's gateway: real WebSockets and real HTTP against a gateway served on 127.0.0.1:0, so
//! protocol edge cases are driven row by row. Every case runs three times, over each sync
//! source the gateway can read: the in-memory source (`memory::*`), and the projectors' store on
//! SQLite (`sqlite::*`) and on PostgreSQL (`postgres::*`; skipped when PostgreSQL is unreachable,
//! a failure when `CI` is set), written through `SyncStore::commit`, `prune`, and a full rebuild
//! exactly as the projector runner writes it. The same behaviour over the real pipeline
//! (commands → journal → projectors → store → gateway) is in `khala_e2e.rs`, and across two
//! `serve` processes in `khala_nodes.rs`.
//!
//! The source is chosen in one place, [`sources`]; every case writes the stream through
//! `TestStream`. No case depends on a MemorySource-only hook: the sabotage switch
//! (`TestStream::set_unavailable`) is a real failure on the store (its topic table is renamed
//! away and back).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::journal::GlobalCursor;
use engine::testing::TestDb;
use projectors::runner::{all_specs, now_ms};
use projectors::store::{BatchCommit, DocWrite, NewRow, ProjectorSpec, Target};
use projectors::{SyncNotifier, SyncStore};
use serde_json::{json, Value};
use sync_gateway::auth::mint::MintRequest;
use sync_gateway::auth::{KeySet, Revocations};
use sync_gateway::client::{ClientError, KhalaClient, Push};
use sync_gateway::config::{GatewayConfig, TopicPolicy};
use sync_gateway::protocol::{ErrorCode, Update};
use sync_gateway::source::{DocOwner, StoreSource, SyncSource};
use sync_gateway::test_utils::{
    auth_config, memory_source, now_secs, sign_claims, TestApp, TestStream,
};
use tokio_tungstenite::tungstenite::Message;

const RUNS: &str = "runtime.run_summaries";
const WORKERS: &str = "runtime.codex_worker_summaries";
const EVENTS: &str = "runtime.codex_worker_events";

/// Defines `memory::<case>`, `sqlite::<case>` and `postgres::<case>` tests that run
/// `<case>(Source)` over each source.
macro_rules! on_every_source {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Source::Memory).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = engine::testing::TestDb::sqlite().await;
                    super::$name(super::Source::Store(&db)).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = engine::testing::TestDb::postgres().await else { return };
                    super::$name(super::Source::Store(&db)).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

on_every_source!(
    join_lists_allowed_topics_and_subscribe_replays_then_streams_live,
    replay_then_live_switches_without_gap_or_duplicate,
    a_replay_older_than_memory_arrives_whole_and_in_order_across_pages_topics_and_byte_bounds,
    a_client_reconnects_and_resumes_from_its_last_watermark,
    stale_cursors_are_refused_with_the_full_payload,
    a_live_session_that_falls_behind_a_rebuild_gets_stale_cursor_mid_stream,
    unknown_and_unscoped_topics_are_forbidden_and_other_channels_are_bad_topics,
    bad_tokens_are_refused_at_the_upgrade_with_403,
    garbage_frames_get_errors_and_oversized_frames_close_the_socket,
    a_slow_consumer_is_disconnected_while_others_keep_receiving,
    the_outbound_queue_is_bounded_by_bytes_not_only_by_frames,
    two_gateways_on_one_source_both_deliver_and_share_revocations,
    two_users_on_one_topic_never_see_each_others_docs,
    hydration_then_subscribe_from_its_watermark_misses_nothing,
    oversized_docs_go_out_as_pointers_and_large_batches_are_split,
    a_subscribe_naming_thousands_of_topics_is_refused_by_count_before_any_topic_work,
    subscribe_rate_topic_count_and_connection_limits_are_enforced,
    payload_hashes_on_the_wire_match_the_compat_vectors,
    the_khala_frame_envelope_matches_the_compat_shape,
    the_token_endpoint_mints_control_plane_shaped_tokens,
    session_revocation_ends_live_channels_and_refuses_their_rejoin,
    shutdown_closes_sockets_with_1001,
    a_failing_source_yields_internal_errors_not_panics,
);

/// The sync source a case runs over.
#[derive(Clone, Copy)]
enum Source<'a> {
    Memory,
    /// The projectors' store in this database.
    Store(&'a TestDb),
}

/// The one place that picks the sync source (and its writer) for these tests.
async fn sources(source: Source<'_>) -> (Arc<dyn SyncSource>, Arc<dyn TestStream>) {
    match source {
        Source::Memory => memory_source(),
        Source::Store(db) => {
            let store = SyncStore::new(&db.database, all_specs());
            let notifier = Arc::new(SyncNotifier::new());
            let stream = StoreStream::new(db, store.clone(), notifier.clone()).await;
            (
                Arc::new(StoreSource::new(store, notifier)),
                Arc::new(stream),
            )
        }
    }
}

async fn app(source: Source<'_>, config: GatewayConfig) -> TestApp {
    let (source, stream) = sources(source).await;
    TestApp::spawn_with(config, source, stream, Revocations::in_memory()).await
}

/// The lease holder the store-backed writer commits as.
const WRITER: &str = "khala-test-writer";
const LEASE_MS: i64 = 3_600_000;

/// The projectors' store as the tests' writer: an append is one projector commit (one stream
/// row and its document, the next version), a prune and a rebuild are the runner's own store
/// calls, each followed by the wake-up the runner sends. It holds every projector's lease.
struct StoreStream {
    database: engine::Database,
    store: SyncStore,
    notifier: Arc<SyncNotifier>,
    /// One writer at a time, as one lease holder per projector commits.
    writing: tokio::sync::Mutex<()>,
}

impl StoreStream {
    async fn new(db: &TestDb, store: SyncStore, notifier: Arc<SyncNotifier>) -> Self {
        for spec in all_specs() {
            store.register(&spec, now_ms()).await.unwrap();
            let lease = store.try_acquire(spec.name, WRITER, now_ms(), LEASE_MS);
            assert!(lease.await.unwrap().is_some(), "a fresh store's lease");
        }
        Self {
            database: db.database.clone(),
            store,
            notifier,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    fn spec(&self, topic: &str) -> ProjectorSpec {
        self.store
            .spec_of_topic(topic)
            .cloned()
            .expect("tests write projectors' topics")
    }

    async fn cursor(&self, spec: &ProjectorSpec) -> GlobalCursor {
        let checkpoint = self.store.checkpoint(spec.name).await.unwrap();
        checkpoint.expect("registered").cursor
    }
}

#[async_trait]
impl TestStream for StoreStream {
    async fn append(&self, topic: &str, doc_key: &str, payload: Value, owner: DocOwner) -> u64 {
        let spec = self.spec(topic);
        let writing = self.writing.lock().await;
        let from = self.cursor(&spec).await;
        let keys = [doc_key.to_owned()];
        let stored = self
            .store
            .load_docs(&spec, Target::Live, &keys)
            .await
            .unwrap();
        let version = stored.first().map_or(1, |d| d.doc_version + 1);
        let now = now_ms();
        let row = NewRow {
            doc_key: doc_key.to_owned(),
            doc_version: version,
            payload: payload.to_string(),
            payload_hash: aggregates::canonical::hash_canonical(&payload),
            owner,
            projected_at_ms: now,
        };
        let doc = DocWrite {
            doc_key: row.doc_key.clone(),
            doc_version: version,
            payload: row.payload.clone(),
            payload_hash: row.payload_hash.clone(),
            owner: row.owner.clone(),
            projected_at_ms: now,
            last_row: Some(0),
        };
        let committed = self.store.commit(BatchCommit {
            spec: &spec,
            target: Target::Live,
            owner: WRITER,
            from,
            to: GlobalCursor::new(from.transaction() + 1, 0),
            events: 1,
            rows: vec![row],
            docs: vec![doc],
            now_ms: now,
            lease_ttl_ms: LEASE_MS,
        });
        let watermark = committed.await.unwrap().first_watermark.unwrap();
        drop(writing);
        self.notifier.committed(topic);
        watermark
    }

    /// Every row is older than the cutoff, so the count alone stops the prune at `through`.
    async fn prune_through(&self, topic: &str, through: u64) {
        let spec = self.spec(topic);
        let writing = self.writing.lock().await;
        let states = self.store.topic_states(&[topic]).await.unwrap();
        let floor = states[0].retention_floor;
        if through > floor {
            let pruned = self.store.prune(&spec, i64::MAX, through - floor, now_ms());
            pruned.await.unwrap();
        }
        drop(writing);
        self.notifier.committed(topic);
    }

    /// A full rebuild of an unchanged journal: the shadow gets the same documents.
    async fn rebuild(&self, topic: &str) {
        let spec = self.spec(topic);
        let writing = self.writing.lock().await;
        let now = now_ms();
        self.store.begin_rebuild(&spec, WRITER, now).await.unwrap();
        let docs = self.store.all_docs(&spec).await.unwrap();
        let shadow = BatchCommit {
            spec: &spec,
            target: Target::Rebuild,
            owner: WRITER,
            from: GlobalCursor::START,
            to: self.cursor(&spec).await,
            events: 0,
            rows: Vec::new(),
            docs: docs
                .into_iter()
                .map(|d| DocWrite {
                    doc_key: d.doc_key,
                    doc_version: d.doc_version,
                    payload: d.payload,
                    payload_hash: d.payload_hash,
                    owner: d.owner,
                    projected_at_ms: d.projected_at_ms,
                    last_row: None,
                })
                .collect(),
            now_ms: now,
            lease_ttl_ms: LEASE_MS,
        };
        self.store.commit(shadow).await.unwrap();
        self.store.finish_rebuild(&spec, WRITER, now).await.unwrap();
        drop(writing);
        self.notifier.committed(topic);
    }

    /// Renames the topic table away (every read of the store fails) and back.
    async fn set_unavailable(&self, unavailable: bool) {
        let (from, to) = if unavailable {
            ("sync_topic_sequences", "sync_topic_sequences_off")
        } else {
            ("sync_topic_sequences_off", "sync_topic_sequences")
        };
        let _writing = self.writing.lock().await;
        match &self.database {
            engine::Database::Postgres(pool) => {
                let sql = format!("ALTER TABLE runtime.{from} RENAME TO {to}");
                sqlx::query(&sql).execute(pool).await.unwrap();
            }
            engine::Database::Sqlite { pool, write_lock } => {
                let _lock = write_lock.lock().await;
                let sql = format!("ALTER TABLE runtime_{from} RENAME TO runtime_{to}");
                sqlx::query(&sql).execute(pool).await.unwrap();
            }
        }
    }
}

fn user(id: &str) -> DocOwner {
    DocOwner::user(id)
}

/// Receives batches until `n` updates arrived (heartbeats skipped).
async fn collect(client: &mut KhalaClient, n: usize) -> Vec<Update> {
    let mut updates = Vec::new();
    while updates.len() < n {
        let batch = client.next_batch().await.expect("update batch");
        updates.extend(batch.updates);
    }
    updates
}

/// Receives until a push that is not a batch or heartbeat.
async fn next_non_batch(client: &mut KhalaClient) -> Push {
    loop {
        match client.next_push().await.expect("push") {
            Push::Batch { .. } | Push::Heartbeat(_) => {}
            other => return other,
        }
    }
}

fn watermarks(updates: &[Update]) -> Vec<u64> {
    updates.iter().map(|u| u.watermark).collect()
}

async fn join_lists_allowed_topics_and_subscribe_replays_then_streams_live(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    for i in 1..=3 {
        app.stream
            .append(
                RUNS,
                &format!("runtime/run_summary:r{i}"),
                json!({"status": "running", "i": i}),
                user("alice"),
            )
            .await;
    }
    // A control-plane token may carry scopes this node does not serve.
    let now = now_secs();
    let token = sign_claims(&json!({
        "iss": "https://openagents.com", "aud": "openagents-sync", "sub": "user:alice",
        "iat": now, "exp": now + 300, "oa_sync_scopes": [RUNS, "runtime.unknown", EVENTS]
    }));
    let mut client = app.connect(&token).await.unwrap();
    let join = client.join(json!({})).await.unwrap().unwrap();
    assert_eq!(join.allowed_topics, [RUNS, EVENTS]);
    assert!(join.current_watermarks.is_empty());
    assert!(join.subscription_id.starts_with("sub_"));

    let reply = client
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 1}, "request_id": "req-1"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.subscription_id, join.subscription_id);
    assert_eq!(reply.topics, [RUNS]);
    assert_eq!(reply.current_watermarks[0].watermark, 3);
    assert_eq!(reply.request_id, Some(json!("req-1")));

    // The replay may come in more than one batch (on PostgreSQL a row is read only once every
    // transaction before it is visible); the last says `replay_complete`.
    let mut replayed = Vec::new();
    let batch = loop {
        let batch = client.next_batch().await.unwrap();
        replayed.extend(batch.updates.iter().cloned());
        if batch.replay_complete {
            break batch;
        }
    };
    assert_eq!(watermarks(&replayed), [2, 3]);
    assert_eq!(batch.head_watermarks[0].watermark, 3);
    let first = &replayed[0];
    assert_eq!(first.doc_key, "runtime/run_summary:r2");
    assert_eq!(first.doc_version, 1);
    assert_eq!(first.payload, Some(json!({"status": "running", "i": 2})));
    assert!(!first.hydration_required);

    app.stream
        .append(
            RUNS,
            "runtime/run_summary:r2",
            json!({"status": "succeeded"}),
            user("alice"),
        )
        .await;
    let live = client.next_batch().await.unwrap();
    assert!(live.replay_complete);
    assert_eq!(watermarks(&live.updates), [4]);
    assert_eq!(live.updates[0].doc_version, 2);

    // Unsubscribe leaves nothing; a sync:heartbeat reports the delivered watermark.
    let hb = client
        .request("sync:v1", "sync:heartbeat", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hb["watermarks"], json!([{"topic": RUNS, "watermark": 4}]));
    let reply = client
        .request("sync:v1", "sync:unsubscribe", json!({"topics": [RUNS]}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["topics"], json!([]));
    app.stop().await;
}

async fn replay_then_live_switches_without_gap_or_duplicate(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    for i in 0..600 {
        let owner = if i % 3 == 0 { "bob" } else { "alice" };
        app.stream
            .append(
                RUNS,
                &format!("runtime/run_summary:{i}"),
                json!({"i": i}),
                user(owner),
            )
            .await;
    }
    let mut client = app.joined(&app.token("user:alice", &[RUNS])).await;
    client
        .subscribe(json!({"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": 0}], "replay_batch_size": 50}))
        .await
        .unwrap()
        .unwrap();
    // Commits keep landing while the replay runs.
    let stream = app.stream.clone();
    let writer = tokio::spawn(async move {
        for i in 600..1200 {
            let owner = if i % 3 == 0 { "bob" } else { "alice" };
            stream
                .append(
                    RUNS,
                    &format!("runtime/run_summary:{i}"),
                    json!({"i": i}),
                    user(owner),
                )
                .await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let expected: Vec<u64> = (1..=1200u64).filter(|wm| (wm - 1) % 3 != 0).collect();
    let mut received = Vec::new();
    let mut saw_incomplete = false;
    let mut completed_at = None;
    while received.len() < expected.len() {
        let batch = client.next_batch().await.unwrap();
        assert!(batch.updates.len() <= 50, "replay_batch_size is honoured");
        if !batch.replay_complete {
            saw_incomplete = true;
            assert!(
                completed_at.is_none(),
                "replay_complete never goes back to false"
            );
        } else if completed_at.is_none() {
            completed_at = Some(received.len());
        }
        received.extend(batch.updates);
    }
    writer.await.unwrap();
    assert!(saw_incomplete);
    assert!(completed_at.is_some());
    assert_eq!(
        watermarks(&received),
        expected,
        "every one of alice's updates exactly once, in order"
    );
    app.stop().await;
}

async fn a_client_reconnects_and_resumes_from_its_last_watermark(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let token = app.token("user:alice", &[RUNS]);
    let mut client = app.joined(&token).await;
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    for i in 0..5 {
        app.stream
            .append(RUNS, &format!("d{i}"), json!({"i": i}), user("alice"))
            .await;
    }
    let seen = collect(&mut client, 5).await;
    let last = seen.last().unwrap().watermark;
    client.close().await;
    for i in 5..9 {
        app.stream
            .append(RUNS, &format!("d{i}"), json!({"i": i}), user("alice"))
            .await;
    }
    let mut again = app.joined(&token).await;
    again
        .subscribe_from(&[(RUNS, Some(last))])
        .await
        .unwrap()
        .unwrap();
    let rest = collect(&mut again, 4).await;
    assert_eq!(watermarks(&rest), [6, 7, 8, 9]);
    app.stop().await;
}

async fn stale_cursors_are_refused_with_the_full_payload(source: Source<'_>) {
    let config = GatewayConfig {
        topics: vec![
            TopicPolicy::new(RUNS, Duration::from_secs(3600), 20_000),
            TopicPolicy::new(WORKERS, Duration::from_secs(3600), 5),
        ],
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    for i in 0..10 {
        app.stream
            .append(RUNS, &format!("d{}", i % 4), json!({"i": i}), user("alice"))
            .await;
        app.stream
            .append(WORKERS, &format!("w{i}"), json!({"i": i}), user("alice"))
            .await;
    }
    app.stream.prune_through(RUNS, 6).await;
    let mut client = app.joined(&app.token("user:alice", &[RUNS, WORKERS])).await;

    let error = client
        .subscribe_from(&[(RUNS, Some(3)), (WORKERS, Some(2))])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::StaleCursor);
    assert_eq!(error.extra["full_resync_required"], true);
    assert_eq!(
        error.extra["reason_codes"],
        json!(["retention_floor_breach", "replay_budget_exceeded"])
    );
    assert_eq!(
        error.extra["stale_topics"],
        json!([
            {"topic": RUNS, "reason": "retention_floor_breach", "resume_after": 3, "retention_floor": 6, "head_watermark": 10, "replay_budget_events": 20000},
            {"topic": WORKERS, "reason": "replay_budget_exceeded", "resume_after": 2, "retention_floor": 0, "head_watermark": 10, "replay_budget_events": 5}
        ])
    );
    let ahead = client
        .subscribe_from(&[(RUNS, Some(11))])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ahead.extra["stale_topics"][0]["reason"], "cursor_ahead");

    // A rebuild starts a new epoch at its marker row (old head + 1 = 11): every cursor before
    // it, the old head included, is stale with epoch_changed.
    app.stream.rebuild(RUNS).await;
    for cursor in [8, 10] {
        let rebuilt = client
            .subscribe_from(&[(RUNS, Some(cursor))])
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(rebuilt.code, ErrorCode::StaleCursor);
        assert_eq!(rebuilt.extra["stale_topics"][0]["reason"], "epoch_changed");
        assert_eq!(rebuilt.extra["stale_topics"][0]["retention_floor"], 11);
        assert_eq!(rebuilt.extra["stale_topics"][0]["head_watermark"], 11);
    }
    // Re-hydration is consistent with the marker; subscribing from it works, and what commits
    // next follows the marker.
    let hydration: Value = reqwest::Client::new()
        .get(format!("{}/sync/v1/topics/{RUNS}/docs", app.base_url))
        .bearer_auth(app.token("user:alice", &[RUNS]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hydration["watermark"], 11);
    assert_eq!(hydration["docs"].as_array().unwrap().len(), 4);
    client
        .subscribe_from(&[(RUNS, Some(11))])
        .await
        .unwrap()
        .unwrap();
    assert!(client.next_batch().await.unwrap().updates.is_empty());
    app.stream
        .append(RUNS, "d0", json!({"i": 10}), user("alice"))
        .await;
    let next = collect(&mut client, 1).await;
    assert_eq!(watermarks(&next), [12]);
    assert_eq!(next[0].doc_version, 4);
    app.stop().await;
}

async fn a_live_session_that_falls_behind_a_rebuild_gets_stale_cursor_mid_stream(
    source: Source<'_>,
) {
    let app = app(source, GatewayConfig::default()).await;
    let mut client = app.joined(&app.token("user:alice", &[RUNS])).await;
    client
        .subscribe_from(&[(RUNS, Some(0))])
        .await
        .unwrap()
        .unwrap();
    assert!(client.next_batch().await.unwrap().replay_complete);
    // The client's cursor (0) falls behind a rebuild's epoch start before anything reaches it.
    app.gateway.tailer(RUNS).unwrap(); // tailer exists
    let source_writes = app.stream.clone();
    source_writes
        .append(RUNS, "a", json!({}), user("bob"))
        .await;
    source_writes.rebuild(RUNS).await;
    source_writes
        .append(RUNS, "b", json!({}), user("alice"))
        .await;
    // The client's cursor is at most 1 and the new epoch starts at the marker (2): it must
    // be told, with a push, not left waiting and not sent "b" as if nothing happened.
    loop {
        match client.next_push().await.unwrap() {
            Push::Batch { batch, .. } => {
                assert!(
                    batch.updates.iter().all(|u| u.doc_key != "b"),
                    "a row of the new epoch reached a cursor of the old one"
                );
            }
            Push::Error(e) => {
                assert_eq!(e.code, ErrorCode::StaleCursor);
                assert_eq!(e.extra["stale_topics"][0]["reason"], "epoch_changed");
                assert_eq!(e.extra["stale_topics"][0]["retention_floor"], 2);
                break;
            }
            Push::Heartbeat(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    app.stop().await;
}

async fn unknown_and_unscoped_topics_are_forbidden_and_other_channels_are_bad_topics(
    source: Source<'_>,
) {
    let app = app(source, GatewayConfig::default()).await;
    let mut client = app
        .connect(&app.token("user:alice", &[RUNS]))
        .await
        .unwrap();
    let bad = client
        .request("rooms:lobby", "phx_join", json!({}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(bad.code, ErrorCode::BadTopic);
    let early = client
        .request("sync:v1", "sync:subscribe", json!({"topics": [RUNS]}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(early.code, ErrorCode::BadSubscription);
    client.join(json!({})).await.unwrap().unwrap();
    let error = client
        .subscribe_from(&[(RUNS, None), (EVENTS, None), ("runtime.nope", None)])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::ForbiddenTopic);
    assert_eq!(
        error.extra["forbidden_topics"],
        json!([EVENTS, "runtime.nope"])
    );
    let malformed = client
        .subscribe(json!({"topics": RUNS}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(malformed.code, ErrorCode::BadSubscription);
    let unknown_field = client
        .subscribe(json!({"topics": [RUNS], "since": 3}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(unknown_field.code, ErrorCode::BadSubscription);
    assert!(
        unknown_field.message.contains("since"),
        "{}",
        unknown_field.message
    );
    let negative = client
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: -1}}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(negative.code, ErrorCode::BadSubscription);
    app.stop().await;
}

async fn bad_tokens_are_refused_at_the_upgrade_with_403(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let now = now_secs();
    let base = json!({
        "iss": "https://openagents.com", "aud": "openagents-sync", "sub": "user:alice",
        "iat": now, "nbf": now, "exp": now + 300, "oa_sync_scopes": RUNS
    });
    let mut expired = base.clone();
    expired["iat"] = json!(now - 1000);
    expired["exp"] = json!(now - 600);
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!("someone-else");
    for (name, token) in [
        ("missing", String::new()),
        ("garbage", "x.y.z".to_owned()),
        ("expired", sign_claims(&expired)),
        ("wrong audience", sign_claims(&wrong_aud)),
    ] {
        match app.connect(&token).await {
            Err(ClientError::Refused { status, body }) => {
                assert_eq!(status, 403, "{name}");
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{name}");
            }
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
    // The comma-separated scope form of the control plane works.
    let mut client = app.joined(&sign_claims(&base)).await;
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    app.stop().await;
}

async fn garbage_frames_get_errors_and_oversized_frames_close_the_socket(source: Source<'_>) {
    let config = GatewayConfig {
        max_inbound_frame_bytes: 4096,
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    let mut client = app.joined(&app.token("user:alice", &[RUNS])).await;
    for garbage in [
        "not json",
        "[1,2,3]",
        r#"{"topic":"sync:v1"}"#,
        r#"[null,null,1,"x",{}]"#,
    ] {
        client.send_raw(Message::text(garbage)).await.unwrap();
        match client.next_push().await.unwrap() {
            Push::Error(e) => assert_eq!(e.code, ErrorCode::BadSubscription, "{garbage}"),
            other => panic!("{garbage}: {other:?}"),
        }
    }
    client
        .send_raw(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert!(
        matches!(client.next_push().await.unwrap(), Push::Error(e) if e.code == ErrorCode::BadSubscription)
    );
    // Still usable.
    assert!(client.phoenix_heartbeat().await.unwrap().is_ok());
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();

    let huge = format!(
        r#"["1","9","sync:v1","sync:heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(10_000)
    );
    client.send_raw(Message::text(huge)).await.unwrap();
    let mut saw_error = false;
    loop {
        match client.next_push().await {
            Ok(Push::Error(e)) => {
                assert_eq!(e.code, ErrorCode::PayloadTooLarge);
                assert_eq!(e.extra["max_frame_bytes"], 4096);
                saw_error = true;
            }
            Ok(_) => {}
            Err(ClientError::Closed(Some((code, _)))) => {
                assert_eq!(code, 1009);
                break;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(saw_error);
    app.stop().await;
}

async fn a_slow_consumer_is_disconnected_while_others_keep_receiving(source: Source<'_>) {
    // The grace is generous so a merely busy reader (a loaded CI machine) is never struck;
    // only a client that stops reading for seconds is.
    let config = GatewayConfig {
        queue_limit: 2,
        slow_consumer_grace: Duration::from_secs(1),
        slow_consumer_max_strikes: 3,
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    let token = app.token("user:alice", &[RUNS]);
    let mut slow = app.joined(&token).await;
    slow.subscribe_from(&[(RUNS, None)]).await.unwrap().unwrap();
    let mut fast = app.joined(&token).await;
    fast.subscribe_from(&[(RUNS, None)]).await.unwrap().unwrap();
    assert!(fast.next_batch().await.unwrap().replay_complete);

    // ~200 KB per doc: enough to fill the slow client's socket buffers quickly.
    let blob = "x".repeat(200_000);
    let rows = 150u64;
    let stream = app.stream.clone();
    let writer = tokio::spawn(async move {
        for i in 0..rows {
            stream
                .append(
                    RUNS,
                    &format!("big{i}"),
                    json!({"i": i, "blob": blob}),
                    user("alice"),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let received = collect(&mut fast, usize::try_from(rows).unwrap()).await;
    assert_eq!(watermarks(&received), (1..=rows).collect::<Vec<_>>());
    writer.await.unwrap();
    // Wait until the gateway gave up on the slow client (3 strikes of 1 s).
    for _ in 0..300 {
        if app.gateway.stats_snapshot().slow_consumer_disconnects > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.gateway.stats_snapshot().slow_consumer_disconnects >= 1);
    // The slow client drains what it had and then finds the socket closed.
    let mut notices = Vec::new();
    loop {
        match slow.next_push().await {
            Ok(Push::Error(e)) => {
                assert_eq!(e.code, ErrorCode::SlowConsumer);
                notices.push(e.extra["action"].as_str().unwrap().to_owned());
            }
            Ok(_) => {}
            Err(ClientError::Closed(close)) => {
                if let Some((code, _)) = close {
                    assert_eq!(code, 1013);
                }
                break;
            }
            Err(ClientError::WebSocket(_)) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(notices.iter().all(|a| a == "throttle" || a == "disconnect"));
    app.stop().await;
}

async fn the_outbound_queue_is_bounded_by_bytes_not_only_by_frames(source: Source<'_>) {
    // A frame limit the test never reaches: only the byte bound can stop the gateway from
    // queueing ~30 MB for a client that does not read.
    let config = GatewayConfig {
        queue_limit: 100_000,
        queue_limit_bytes: 1024 * 1024,
        slow_consumer_grace: Duration::from_secs(1),
        slow_consumer_max_strikes: 2,
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    let token = app.token("user:alice", &[RUNS]);
    let mut slow = app.joined(&token).await;
    slow.subscribe_from(&[(RUNS, None)]).await.unwrap().unwrap();
    let blob = "x".repeat(200_000);
    for i in 0..150u64 {
        app.stream
            .append(
                RUNS,
                &format!("big{i}"),
                json!({"i": i, "blob": blob}),
                user("alice"),
            )
            .await;
    }
    for _ in 0..300 {
        if app.gateway.stats_snapshot().slow_consumer_disconnects > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        app.gateway.stats_snapshot().slow_consumer_disconnects >= 1,
        "a non-reading client with 30 MB pending was never struck"
    );
    drop(slow);
    app.stop().await;
}

async fn two_gateways_on_one_source_both_deliver_and_share_revocations(source: Source<'_>) {
    let db = engine::testing::TestDb::sqlite().await;
    let config = GatewayConfig {
        revocation_poll_interval: Duration::from_millis(100),
        ..GatewayConfig::default()
    };
    let (source, stream) = sources(source).await;
    let a = TestApp::spawn_with(
        config.clone(),
        source.clone(),
        stream.clone(),
        Revocations::durable(db.database.clone()),
    )
    .await;
    let b = TestApp::spawn_with(
        config,
        source,
        stream.clone(),
        Revocations::durable(db.database.clone()),
    )
    .await;
    let token_a = a.token_with(MintRequest {
        subject: "user:alice".into(),
        scopes: vec![RUNS.into()],
        session_id: Some("sess-a".into()),
        ..MintRequest::default()
    });
    let token_b = b.token_with(MintRequest {
        subject: "user:alice".into(),
        scopes: vec![RUNS.into()],
        session_id: Some("sess-b".into()),
        ..MintRequest::default()
    });
    let mut on_a = a.joined(&token_a).await;
    let mut on_b = b.joined(&token_b).await;
    on_a.subscribe_from(&[(RUNS, Some(0))])
        .await
        .unwrap()
        .unwrap();
    on_b.subscribe_from(&[(RUNS, Some(0))])
        .await
        .unwrap()
        .unwrap();
    for i in 0..20 {
        stream
            .append(RUNS, &format!("d{i}"), json!({"i": i}), user("alice"))
            .await;
    }
    assert_eq!(
        watermarks(&collect(&mut on_a, 20).await),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        watermarks(&collect(&mut on_b, 20).await),
        (1..=20).collect::<Vec<_>>()
    );

    // Revoking session b through node A's endpoint ends it on node B.
    let response = reqwest::Client::new()
        .post(format!("{}/internal/v1/sync/sessions/revoke", a.base_url))
        .json(&json!({"session_id": "sess-b", "reason": "logout"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    match next_non_batch(&mut on_b).await {
        Push::Error(e) => assert_eq!(e.code, ErrorCode::ReauthRequired),
        other => panic!("unexpected {other:?}"),
    }
    let refused = b.connect(&token_b).await.err().unwrap();
    assert_eq!(refused.refusal_code().as_deref(), Some("reauth_required"));
    // Session a is untouched.
    stream.append(RUNS, "after", json!({}), user("alice")).await;
    assert_eq!(collect(&mut on_a, 1).await[0].doc_key, "after");
    a.stop().await;
    b.stop().await;
    db.cleanup().await;
}

async fn two_users_on_one_topic_never_see_each_others_docs(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let owners = [
        DocOwner {
            user_id: Some("alice".into()),
            guest_scope: None,
            org_id: Some("org1".into()),
        },
        DocOwner {
            user_id: Some("bob".into()),
            guest_scope: None,
            org_id: Some("org1".into()),
        },
        DocOwner {
            user_id: Some("alice".into()),
            guest_scope: None,
            org_id: Some("org2".into()),
        },
        DocOwner {
            user_id: None,
            guest_scope: Some("g1".into()),
            org_id: None,
        },
    ];
    for (i, owner) in owners.iter().cycle().take(40).enumerate() {
        app.stream
            .append(EVENTS, &format!("doc{i}"), json!({"i": i}), owner.clone())
            .await;
    }
    let token = |subject: &str, org: Option<&str>| {
        app.token_with(MintRequest {
            subject: subject.into(),
            scopes: vec![EVENTS.into()],
            org_id: org.map(Into::into),
            ..MintRequest::default()
        })
    };
    let principals = [
        (token("user:alice", Some("org1")), 0usize),
        (token("user:bob", Some("org1")), 1),
        (token("guest:g1", None), 3),
    ];
    let mut clients = Vec::new();
    for (token, index) in &principals {
        let mut client = app.joined(token).await;
        client
            .subscribe_from(&[(EVENTS, Some(0))])
            .await
            .unwrap()
            .unwrap();
        clients.push((client, *index));
    }
    for i in 40..80 {
        app.stream
            .append(
                EVENTS,
                &format!("doc{i}"),
                json!({"i": i}),
                owners[i % 4].clone(),
            )
            .await;
    }
    for (client, index) in &mut clients {
        let updates = collect(client, 20).await;
        let expected: Vec<u64> = (0..80u64)
            .filter(|i| *i as usize % 4 == *index)
            .map(|i| i + 1)
            .collect();
        assert_eq!(
            watermarks(&updates),
            expected,
            "owner {index} sees only its docs, replay and live"
        );
    }
    // Hydration is filtered the same way.
    let docs: Value = reqwest::Client::new()
        .get(format!("{}/sync/v1/topics/{EVENTS}/docs", app.base_url))
        .bearer_auth(&principals[1].0)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(docs["docs"].as_array().unwrap().len(), 20);
    assert!(docs["docs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["payload"]["i"].as_u64().unwrap() % 4 == 1));
    app.stop().await;
}

async fn hydration_then_subscribe_from_its_watermark_misses_nothing(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    for i in 0..10 {
        app.stream
            .append(
                WORKERS,
                &format!("runtime/codex_worker_summary:w{}", i % 3),
                json!({"seq": i}),
                user("alice"),
            )
            .await;
    }
    let token = app.token("user:alice", &[WORKERS]);
    let http = reqwest::Client::new();
    let hydration: Value = http
        .get(format!("{}/sync/v1/topics/{WORKERS}/docs", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hydration["watermark"], 10);
    assert_eq!(hydration["docs"].as_array().unwrap().len(), 3);
    let doc = &hydration["docs"][0];
    assert_eq!(
        doc["payload_hash"],
        aggregates::canonical::hash_canonical(&doc["payload"])
    );
    // Commits between hydration and subscribe are replayed.
    app.stream
        .append(
            WORKERS,
            "runtime/codex_worker_summary:w9",
            json!({"seq": 10}),
            user("alice"),
        )
        .await;
    let mut client = app.joined(&token).await;
    client
        .subscribe_from(&[(WORKERS, Some(10))])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watermarks(&collect(&mut client, 1).await), [11]);

    let one: Value = http
        .get(format!(
            "{}/sync/v1/topics/{WORKERS}/docs?doc_key=runtime/codex_worker_summary:w1",
            app.base_url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["docs"].as_array().unwrap().len(), 1);
    assert_eq!(one["docs"][0]["doc_version"], 3);

    for (request, status, code) in [
        (
            http.get(format!("{}/sync/v1/topics/{WORKERS}/docs", app.base_url)),
            401,
            "unauthorized",
        ),
        (
            http.get(format!("{}/sync/v1/topics/{RUNS}/docs", app.base_url))
                .bearer_auth(&token),
            403,
            "forbidden_topic",
        ),
        (
            http.get(format!("{}/sync/v1/topics/runtime.nope/docs", app.base_url))
                .bearer_auth(&token),
            404,
            "bad_topic",
        ),
        (
            http.get(format!(
                "{}/sync/v1/topics/{WORKERS}/docs?since=1",
                app.base_url
            ))
            .bearer_auth(&token),
            400,
            "invalid_request",
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
    }
    app.stop().await;
}

async fn oversized_docs_go_out_as_pointers_and_large_batches_are_split(source: Source<'_>) {
    let config = GatewayConfig {
        max_update_bytes: 1024,
        max_batch_bytes: 16 * 1024,
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    let token = app.token("user:alice", &[RUNS]);
    let big = json!({"blob": "y".repeat(5000)});
    app.stream
        .append(RUNS, "big", big.clone(), user("alice"))
        .await;
    for i in 0..40 {
        app.stream
            .append(
                RUNS,
                &format!("mid{i}"),
                json!({"pad": "z".repeat(900)}),
                user("alice"),
            )
            .await;
    }
    let mut client = app.joined(&token).await;
    client
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 0}, "replay_batch_size": 1000}))
        .await
        .unwrap()
        .unwrap();
    let mut updates = Vec::new();
    let mut batches = 0;
    while updates.len() < 41 {
        let batch = client.next_batch().await.unwrap();
        batches += 1;
        updates.extend(batch.updates);
    }
    assert!(
        batches >= 3,
        "41 updates of ~1 KB do not fit one 16 KiB batch ({batches} batches)"
    );
    let pointer = &updates[0];
    assert_eq!(pointer.payload, None);
    assert!(pointer.hydration_required);
    assert_eq!(
        pointer.payload_hash,
        aggregates::canonical::hash_canonical(&big)
    );
    assert!(updates[1..]
        .iter()
        .all(|u| !u.hydration_required && u.payload.is_some()));
    let fetched: Value = reqwest::Client::new()
        .get(format!(
            "{}/sync/v1/topics/{RUNS}/docs?doc_key=big",
            app.base_url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["docs"][0]["payload"], big);
    app.stop().await;
}

async fn a_subscribe_naming_thousands_of_topics_is_refused_by_count_before_any_topic_work(
    source: Source<'_>,
) {
    let app = app(source, GatewayConfig::default()).await;
    let token = app.token("user:alice", &[RUNS]);
    let mut client = app.joined(&token).await;
    // Unknown names: before the count came first, each was checked and the reply was a
    // forbidden_topic listing all of them.
    let names: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
    let topics: Vec<(&str, Option<u64>)> = names.iter().map(|n| (n.as_str(), None)).collect();
    let refused = client.subscribe_from(&topics).await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadSubscription);
    assert_eq!(refused.extra["max_topics"], 16);
    // Still usable.
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    app.stop().await;
}

async fn subscribe_rate_topic_count_and_connection_limits_are_enforced(source: Source<'_>) {
    let config = GatewayConfig {
        subscribe_burst: 2,
        subscribe_per_second: 0.5,
        max_topics_per_subscription: 1,
        max_connections: 2,
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    let token = app.token("user:alice", &[RUNS, WORKERS]);
    let mut client = app.joined(&token).await;
    let too_many = client
        .subscribe_from(&[(RUNS, None), (WORKERS, None)])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(too_many.code, ErrorCode::BadSubscription);
    assert_eq!(too_many.extra["max_topics"], 1);
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let limited = client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(limited.code, ErrorCode::RateLimited);
    let retry = limited.extra_u64("retry_after_ms").unwrap();
    assert!(retry > 0 && retry <= 2000, "{retry}");

    let _second = app.joined(&token).await;
    let refused = app.connect(&token).await.err().unwrap();
    match &refused {
        ClientError::Refused { status, .. } => assert_eq!(*status, 503),
        other => panic!("{other}"),
    }
    assert_eq!(refused.refusal_code().as_deref(), Some("over_capacity"));
    app.stop().await;
}

async fn payload_hashes_on_the_wire_match_the_compat_vectors(source: Source<'_>) {
    let vectors: Value = serde_json::from_str(include_str!(
        "../fixtures/compat/khala_payload_hash_vectors.v1.json"
    ))
    .unwrap();
    let app = app(source, GatewayConfig::default()).await;
    let mut client = app.joined(&app.token("user:alice", &[RUNS])).await;
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let vectors = vectors["vectors"].as_array().unwrap();
    for vector in vectors {
        app.stream
            .append(
                RUNS,
                vector["name"].as_str().unwrap(),
                vector["payload"].clone(),
                user("alice"),
            )
            .await;
    }
    let updates = collect(&mut client, vectors.len()).await;
    for (update, vector) in updates.iter().zip(vectors) {
        assert_eq!(
            update.payload_hash,
            vector["sha256"].as_str().unwrap(),
            "{}",
            vector["name"]
        );
        assert_eq!(
            aggregates::canonical::canonical_json(update.payload.as_ref().unwrap()),
            vector["canonical_json"].as_str().unwrap()
        );
    }
    app.stop().await;
}

async fn the_khala_frame_envelope_matches_the_compat_shape(source: Source<'_>) {
    use base64::Engine as _;
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/compat/khala-frame-v1.json")).unwrap();
    let replay = &fixture["fixtures"][0]["frame"];
    let app = app(source, GatewayConfig::default()).await;
    for i in 0..45u64 {
        app.stream
            .append(
                RUNS,
                &format!("run:{i}"),
                json!({"status": "running"}),
                user("alice"),
            )
            .await;
    }
    let mut client = app
        .connect(&app.token("user:alice", &[RUNS]))
        .await
        .unwrap();
    client
        .join(json!({"khala_frame": true}))
        .await
        .unwrap()
        .unwrap();
    client
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 41}, "replay_batch_size": 1}))
        .await
        .unwrap()
        .unwrap();
    let frame = client.next_frame().await.unwrap();
    assert_eq!(frame.event, "sync:frame");
    let keys: Vec<&String> = frame.payload.as_object().unwrap().keys().collect();
    let fixture_keys: Vec<&String> = replay.as_object().unwrap().keys().collect();
    assert_eq!(keys, fixture_keys);
    assert_eq!(frame.payload["topic"], replay["topic"]);
    assert_eq!(frame.payload["seq"], replay["seq"]);
    assert_eq!(frame.payload["kind"], replay["kind"]);
    assert_eq!(frame.payload["schema_version"], replay["schema_version"]);
    let ours: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(frame.payload["payload_bytes"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let theirs: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(replay["payload_bytes"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    // Same batch; ours adds payload_hash and hydration_required to each update.
    assert_eq!(ours["replay_complete"], theirs["replay_complete"]);
    assert_eq!(ours["head_watermarks"], theirs["head_watermarks"]);
    let (mine, fixture_update) = (&ours["updates"][0], &theirs["updates"][0]);
    for key in ["topic", "payload", "watermark"] {
        assert_eq!(mine[key], fixture_update[key], "{key}");
    }
    assert_eq!(mine["doc_key"], "run:41");
    // Errors use the envelope too.
    app.stream.prune_through(RUNS, 42).await;
    let stale = client
        .subscribe_from(&[(RUNS, Some(10))])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(stale.code, ErrorCode::StaleCursor);
    app.stop().await;
}

async fn the_token_endpoint_mints_control_plane_shaped_tokens(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/sync/token", app.base_url);
    let response = http
        .post(&url)
        .json(&json!({"subject": "user:alice", "scopes": [RUNS], "ttl_seconds": 120, "org_id": "org1", "device_id": "ios:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "token",
            "token_type",
            "expires_in",
            "issued_at",
            "expires_at",
            "issuer",
            "audience",
            "subject",
            "org_id",
            "claims_version",
            "scopes"
        ]
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    let mut client = app.joined(body["token"].as_str().unwrap()).await;
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();

    for (payload, status, code) in [
        (
            json!({"subject": "user:alice", "scopes": ["runtime.nope"]}),
            422,
            "invalid_scope",
        ),
        (
            json!({"subject": "user:alice", "scopes": [RUNS], "admin": true}),
            422,
            "invalid_request",
        ),
    ] {
        let response = http.post(&url).json(&payload).send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            code
        );
    }
    let malformed = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    app.stop().await;

    // A node that only verifies (asymmetric public key) cannot mint.
    let (source, stream) = sources(source).await;
    let verify_only = auth_config_without_signing();
    let app = TestApp::spawn_full(
        GatewayConfig::default(),
        source,
        stream,
        Revocations::in_memory(),
        verify_only,
    )
    .await;
    let response = http
        .post(format!("{}/api/sync/token", app.base_url))
        .json(&json!({"subject": "user:alice", "scopes": [RUNS]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "sync_token_unavailable"
    );
    app.stop().await;
}

fn auth_config_without_signing() -> sync_gateway::auth::AuthConfig {
    let mut config = auth_config();
    config.keys = KeySet::new()
        .with_hs256("verify-only", "a-secret-that-is-long-enough")
        .unwrap();
    config
}

async fn session_revocation_ends_live_channels_and_refuses_their_rejoin(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let mint = |session: &str| {
        app.token_with(MintRequest {
            subject: "user:alice".into(),
            scopes: vec![RUNS.into()],
            session_id: Some(session.into()),
            device_id: Some("ios:7".into()),
            ..MintRequest::default()
        })
    };
    let token = mint("sess-1");
    let mut client = app.joined(&token).await;
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/internal/v1/sync/sessions/revoke", app.base_url);
    for (payload, status) in [
        (json!({"reason": "x"}), 422),
        (json!({"session_id": "", "reason": "x"}), 422),
        (json!({"session_id": "s", "reason": " "}), 422),
        (json!({"session_id": "s"}), 422),
    ] {
        assert_eq!(
            http.post(&url)
                .json(&payload)
                .send()
                .await
                .unwrap()
                .status(),
            status,
            "{payload}"
        );
    }
    let response: Value = http
        .post(&url)
        .json(&json!({"session_id": "sess-1", "reason": "user logged out"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["revoked"][0]["kind"], "session");
    assert_eq!(response["revoked"][0]["subject_id"], "sess-1");
    match next_non_batch(&mut client).await {
        Push::Error(e) => assert_eq!(e.code, ErrorCode::ReauthRequired),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_non_batch(&mut client).await, Push::ChannelClosed);
    match client.next_frame().await {
        Err(ClientError::Closed(Some((code, _)))) => assert_eq!(code, 1008),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        app.connect(&token)
            .await
            .err()
            .unwrap()
            .refusal_code()
            .as_deref(),
        Some("reauth_required")
    );
    // A fresh login (a token issued after the revocation) is accepted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut fresh = app.joined(&mint("sess-1")).await;
    fresh
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    // Device revocation covers every session of the device.
    http.post(&url)
        .json(&json!({"device_id": "ios:7", "reason": "lost"}))
        .send()
        .await
        .unwrap();
    match next_non_batch(&mut fresh).await {
        Push::Error(e) => assert_eq!(e.code, ErrorCode::ReauthRequired),
        other => panic!("{other:?}"),
    }
    app.stop().await;
}

async fn shutdown_closes_sockets_with_1001(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let mut client = app.joined(&app.token("user:alice", &[RUNS])).await;
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let shutdown = app.shutdown.clone();
    let stopping = tokio::spawn(app.stop());
    shutdown.cancel();
    loop {
        match client.next_push().await {
            Ok(_) => {}
            Err(ClientError::Closed(Some((code, _)))) => {
                assert_eq!(code, 1001);
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("gateway stops")
        .unwrap();
}

async fn a_failing_source_yields_internal_errors_not_panics(source: Source<'_>) {
    let app = app(source, GatewayConfig::default()).await;
    let token = app.token("user:alice", &[RUNS]);
    let mut client = app.joined(&token).await;
    app.stream.set_unavailable(true).await;
    let error = client
        .subscribe_from(&[(RUNS, Some(0))])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal);
    let response = reqwest::Client::new()
        .get(format!("{}/sync/v1/topics/{RUNS}/docs", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "internal"
    );
    app.stream.set_unavailable(false).await;
    client
        .subscribe_from(&[(RUNS, Some(0))])
        .await
        .unwrap()
        .unwrap();
    app.stop().await;
}

mod watch_client {
    use super::*;

    on_every_source!(
        watch_hydrates_subscribes_persists_and_resumes_from_its_state_file,
        watch_rehydrates_when_its_cursor_is_stale,
        watch_reconnects_and_resumes_without_gaps_when_the_server_drops_it,
    );
    use sync_gateway::cli::{watch, WatchArgs, WatchEvent, WatchState};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn args(
        app: &TestApp,
        token: &str,
        topic: &str,
        state: &std::path::Path,
        exit_after: usize,
    ) -> WatchArgs {
        WatchArgs {
            url: app.base_url.clone(),
            token: token.to_owned(),
            topic: topic.to_owned(),
            from: None,
            state: Some(state.to_owned()),
            json: true,
            max_backoff: Duration::from_millis(500),
            exit_after: Some(exit_after),
        }
    }

    /// Runs the watcher to completion and returns what it reported.
    async fn run(args: WatchArgs) -> Vec<WatchEvent> {
        let (tx, mut rx) = mpsc::channel(10_000);
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            watch(&args, tx, CancellationToken::new()),
        )
        .await
        .expect("watch finishes");
        result.expect("watch succeeds");
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    fn updates(events: &[WatchEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Update(u) => Some(u.watermark),
                _ => None,
            })
            .collect()
    }

    async fn watch_hydrates_subscribes_persists_and_resumes_from_its_state_file(
        source: Source<'_>,
    ) {
        let app = app(source, GatewayConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("watch.json");
        for i in 0..3 {
            app.stream
                .append(RUNS, &format!("r{i}"), json!({"i": i}), user("alice"))
                .await;
        }
        let token = app.token("user:alice", &[RUNS]);
        // Commits arrive once the watcher has hydrated.
        let (tx, mut rx) = mpsc::channel(10_000);
        let watch_args = args(&app, &token, RUNS, &state, 3);
        let watcher =
            tokio::spawn(async move { watch(&watch_args, tx, CancellationToken::new()).await });
        let first = rx.recv().await.unwrap();
        match &first {
            WatchEvent::Hydrated {
                watermark, docs, ..
            } => {
                assert_eq!(*watermark, 3);
                assert_eq!(docs.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        for i in 3..6 {
            app.stream
                .append(RUNS, &format!("r{i}"), json!({"i": i}), user("alice"))
                .await;
        }
        tokio::time::timeout(Duration::from_secs(60), watcher)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut events = vec![first];
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        assert_eq!(updates(&events), [4, 5, 6]);
        let saved = WatchState::load(&state).unwrap().unwrap();
        assert_eq!(
            saved,
            WatchState {
                topic: RUNS.into(),
                watermark: 6
            }
        );

        // A second run resumes from the file: no hydration, only what is new.
        for i in 6..8 {
            app.stream
                .append(RUNS, &format!("r{i}"), json!({"i": i}), user("alice"))
                .await;
        }
        let events = run(args(
            &app,
            &token,
            RUNS,
            &state,
            8 - usize::try_from(saved.watermark).unwrap(),
        ))
        .await;
        assert!(!events
            .iter()
            .any(|e| matches!(e, WatchEvent::Hydrated { .. })));
        assert_eq!(
            updates(&events),
            ((saved.watermark + 1)..=8).collect::<Vec<_>>()
        );
        assert_eq!(WatchState::load(&state).unwrap().unwrap().watermark, 8);
        app.stop().await;
    }

    async fn watch_rehydrates_when_its_cursor_is_stale(source: Source<'_>) {
        let app = app(source, GatewayConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("watch.json");
        WatchState {
            topic: RUNS.into(),
            watermark: 2,
        }
        .save(&state)
        .unwrap();
        for i in 0..10 {
            app.stream
                .append(RUNS, &format!("r{}", i % 4), json!({"i": i}), user("alice"))
                .await;
        }
        app.stream.prune_through(RUNS, 8).await;
        let token = app.token("user:alice", &[RUNS]);
        let stream = app.stream.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream
                .append(RUNS, "r9", json!({"i": 10}), user("alice"))
                .await;
        });
        let events = run(args(&app, &token, RUNS, &state, 1)).await;
        writer.await.unwrap();
        assert!(matches!(&events[0], WatchEvent::Resync(e) if e.code == ErrorCode::StaleCursor));
        assert!(
            matches!(&events[1], WatchEvent::Hydrated { watermark: 10, docs, .. } if docs.len() == 4)
        );
        assert_eq!(updates(&events), [11]);
        app.stop().await;
    }

    async fn watch_reconnects_and_resumes_without_gaps_when_the_server_drops_it(
        source: Source<'_>,
    ) {
        let app = app(
            source,
            GatewayConfig {
                channel_idle_timeout: Duration::from_millis(400),
                ..GatewayConfig::default()
            },
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("watch.json");
        let token = app.token("user:alice", &[RUNS]);
        let stream = app.stream.clone();
        let writer = tokio::spawn(async move {
            for i in 0..60 {
                stream
                    .append(RUNS, &format!("r{i}"), json!({"i": i}), user("alice"))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // 30 updates take ~1.5 s: the 400 ms idle close drops the channel several times.
        let events = run(args(&app, &token, RUNS, &state, 30)).await;
        writer.await.unwrap();
        let hydrated_at = match &events[0] {
            WatchEvent::Hydrated { watermark, .. } => *watermark,
            other => panic!("{other:?}"),
        };
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WatchEvent::Reconnecting { .. })),
            "the idle channel was closed at least once"
        );
        let seen = updates(&events);
        assert_eq!(
            seen,
            ((hydrated_at + 1)..=(hydrated_at + 30)).collect::<Vec<_>>()
        );
        app.stop().await;
    }
}

pub(crate) mod phoenix_js {
    use super::*;

    on_every_source!(the_official_phoenix_js_client_joins_subscribes_and_receives_update_batches);
    use std::path::PathBuf;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    fn in_ci() -> bool {
        engine::testing::in_ci()
    }

    /// `tests/js` with its dependencies installed (`npm ci` when `node_modules` is missing), or
    /// `None` when Node is not installed (a failure under CI).
    pub(crate) async fn js_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
        let node = Command::new("node").arg("--version").output().await;
        if !node.is_ok_and(|o| o.status.success()) {
            assert!(
                !in_ci(),
                "CI is set but `node` is not installed: the Phoenix JS client test cannot run"
            );
            eprintln!("SKIPPING the Phoenix JS client test: `node` is not installed");
            return None;
        }
        if !dir.join("node_modules/phoenix").exists() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .await
                .expect("run npm ci");
            assert!(status.success(), "npm ci failed in {}", dir.display());
        }
        Some(dir)
    }

    async fn the_official_phoenix_js_client_joins_subscribes_and_receives_update_batches(
        source: Source<'_>,
    ) {
        let Some(dir) = js_dir().await else { return };
        let app = app(source, GatewayConfig::default()).await;
        app.stream
            .append(
                RUNS,
                "replayed-doc",
                json!({"status": "running"}),
                user("alice"),
            )
            .await;
        let token = app.token("user:alice", &[RUNS]);
        let mut child = Command::new("node")
            .arg("phoenix_client.mjs")
            .arg(format!("ws://{}", app.addr))
            .arg(&token)
            .arg(RUNS)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = Value::Null;
        while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("node output")
            .unwrap()
        {
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            assert!(
                value.get("error").is_none(),
                "phoenix client failed: {value}"
            );
            if value["step"] == "ready" {
                app.stream
                    .append(
                        RUNS,
                        "live-doc",
                        json!({"status": "succeeded"}),
                        user("alice"),
                    )
                    .await;
            }
            last = value;
        }
        let status = child.wait().await.unwrap();
        assert!(status.success(), "node exited with {status}: {last}");
        assert_eq!(last["step"], "done");
        assert_eq!(last["join"]["allowed_topics"], json!([RUNS]));
        assert_eq!(last["subscribe"]["topics"], json!([RUNS]));
        let updates: Vec<&Value> = last["batches"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["updates"].as_array().unwrap())
            .collect();
        let keys: Vec<&str> = updates
            .iter()
            .map(|u| u["doc_key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["replayed-doc", "live-doc"]);
        assert_eq!(last["batches"][0]["replay_complete"], true);
        assert!(last["heartbeats"].as_u64().unwrap() >= 1);
        app.stop().await;
    }
}

/// Replays that memory cannot serve (a tailer window of two rows) come from the source page by
/// page (joined by the store's database, docs/adr/0132): every row of the principal on each
/// topic exactly once and in watermark order, batches within `replay_batch_size` and the byte
/// bound (a page too large for the room left is read row by row), an oversized document as a
/// pointer, then live rows.
async fn a_replay_older_than_memory_arrives_whole_and_in_order_across_pages_topics_and_byte_bounds(
    source: Source<'_>,
) {
    let config = GatewayConfig {
        window_rows: 2,
        feed_rows: 2,
        max_update_bytes: 2048,
        max_batch_bytes: 12 * 1024,
        ..GatewayConfig::default()
    };
    let app = app(source, config).await;
    let mut expected: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for i in 0..90 {
        let (topic, key) = if i % 4 == 3 {
            (WORKERS, format!("w{i}"))
        } else {
            (RUNS, format!("runtime/run_summary:{i}"))
        };
        let owner = if i % 5 == 0 { "bob" } else { "alice" };
        let payload = if i == 7 {
            json!({"blob": "b".repeat(3000)})
        } else {
            json!({"i": i, "pad": "p".repeat(500 + i * 5)})
        };
        app.stream.append(topic, &key, payload, user(owner)).await;
        if owner == "alice" {
            expected.entry(topic).or_default().push(key);
        }
    }
    let token = app.token("user:alice", &[RUNS, WORKERS]);
    let mut client = app.joined(&token).await;
    client
        .subscribe(json!({"topics": [RUNS, WORKERS], "resume_after": {RUNS: 0, WORKERS: 0}, "replay_batch_size": 16}))
        .await
        .unwrap()
        .unwrap();
    let total: usize = expected.values().map(Vec::len).sum();
    let mut received: Vec<Update> = Vec::new();
    let mut batches = 0;
    while received.len() < total {
        let batch = client.next_batch().await.unwrap();
        batches += 1;
        assert!(batch.updates.len() <= 16, "replay_batch_size is honoured");
        let bytes: usize = batch
            .updates
            .iter()
            .map(|u| serde_json::to_string(u).unwrap().len())
            .sum();
        assert!(bytes <= 12 * 1024, "a batch of {bytes} B");
        received.extend(batch.updates);
    }
    assert!(
        batches > total.div_ceil(16),
        "{batches} batches: the byte bound split pages"
    );
    for (topic, keys) in &expected {
        let mine: Vec<&Update> = received.iter().filter(|u| u.topic == *topic).collect();
        let got: Vec<&str> = mine.iter().map(|u| u.doc_key.as_str()).collect();
        assert_eq!(&got, keys, "{topic}: every row once, in order");
        assert!(
            mine.windows(2).all(|w| w[0].watermark < w[1].watermark),
            "{topic}: watermarks ascend"
        );
    }
    let pointer = received.iter().find(|u| u.doc_key == "w7").unwrap();
    assert!(pointer.hydration_required && pointer.payload.is_none());
    assert!(received
        .iter()
        .filter(|u| u.doc_key != "w7")
        .all(|u| u.payload.is_some() && !u.hydration_required));
    app.stream
        .append(
            RUNS,
            "runtime/run_summary:live",
            json!({"live": true}),
            user("alice"),
        )
        .await;
    let live = loop {
        let batch = client.next_batch().await.unwrap();
        if let Some(update) = batch.updates.into_iter().next() {
            break update;
        }
    };
    assert_eq!(live.doc_key, "runtime/run_summary:live");
    app.stop().await;
}

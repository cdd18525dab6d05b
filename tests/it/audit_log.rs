//! The audit log: the Merkle tree over the journal is extended exactly once by concurrent
//! maintainers and equals a fresh build from the journal; a `serve` killed with SIGKILL while it
//! extends the tree resumes it to the same result; the routes serve signed checkpoints and
//! inclusion and consistency proofs that verify, with owner/operator checks and precise errors.

use std::time::Duration;

use engine::audit_log::checkpoint::Checkpoint;
use engine::audit_log::merkle::{self, Hash};
use engine::audit_log::store::{LeafBuilder, MaintainerConfig};
use engine::audit_log::{AuditKey, AuditStore};
use engine::journal::{AppendRequest, Journal};
use engine::testing::TestDb;
use openagents_runtime::replay::fixture::Fixture;
use openagents_runtime::replay::runner::run_fixture;
use serde_json::Value;

use crate::app::{claims, token};
use crate::child::ServeChild;
use crate::support::{on_both_backends, raw_event, read_all_settled};

/// The audit key every test `serve` child uses (`OA_AUDIT_KEY`).
pub const TEST_AUDIT_KEY: &str = "a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d1";

pub fn test_key() -> AuditKey {
    AuditKey::from_hex(TEST_AUDIT_KEY).unwrap()
}

pub fn fixture(name: &str) -> Fixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("replay-fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs, workers, a legacy upcast: events of several aggregates interleaved.
pub async fn seed_runs(db: &TestDb) {
    for name in [
        "run_happy_path_with_tools.json",
        "interleaved_runs_of_several_workers.json",
        "legacy_events_upcast.json",
    ] {
        run_fixture(&fixture(name), db.database.journal())
            .await
            .unwrap();
    }
}

/// `count` raw events in batches of `per_append` on distinct aggregates.
pub async fn seed_raw(db: &TestDb, prefix: &str, count: usize, per_append: usize) {
    let journal = db.database.journal();
    let mut done = 0;
    let mut aggregate = 0;
    while done < count {
        let n = per_append.min(count - done);
        let events: Vec<_> = (0..n)
            .map(|i| raw_event(&format!("{prefix}-{aggregate}-{i}")))
            .collect();
        journal
            .append(AppendRequest {
                aggregate_type: "test",
                aggregate_id: &format!("{prefix}-{aggregate}"),
                expected_sequence: 0,
                events: &events,
                idempotency: None,
                nonce: None,
            })
            .await
            .unwrap();
        done += n;
        aggregate += 1;
    }
}

/// The leaves a fresh build from the journal gives.
pub async fn fresh_leaves(db: &TestDb) -> Vec<Hash> {
    let store = AuditStore::new(&db.database);
    let state = store.state().await.unwrap();
    let events = read_all_settled(&db.database.journal()).await;
    let mut builder = LeafBuilder::new(db.database.journal(), state.redaction_key.clone());
    let mut leaves = Vec::with_capacity(events.len());
    for event in &events {
        leaves.push(builder.leaf(event).await.unwrap());
    }
    leaves
}

/// The tiles a tree of `n` leaves stores, `(level, idx, width)`: every level's full tiles and its
/// partial one (docs/adr/0127-audit-tree-tiles.md).
fn expected_tiles(n: u64) -> Vec<(i64, i64, i64)> {
    let mut out = Vec::new();
    let (mut level, mut nodes) = (0, n);
    while nodes > 0 {
        for idx in 0..nodes.div_ceil(256) {
            out.push((level, idx as i64, (nodes - idx * 256).min(256) as i64));
        }
        nodes /= 256;
        level += 1;
    }
    out
}

async fn stored_tiles(db: &TestDb) -> Vec<(i64, i64, i64)> {
    let sql = match &db.database {
        engine::Database::Postgres(_) => {
            "SELECT level::bigint, idx, (length(hashes) / 32)::bigint FROM runtime.audit_tree_tiles ORDER BY level, idx"
        }
        engine::Database::Sqlite { .. } => {
            "SELECT level, idx, length(hashes) / 32 FROM runtime_audit_tree_tiles ORDER BY level, idx"
        }
    };
    match &db.database {
        engine::Database::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        engine::Database::Sqlite { pool, .. } => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

/// The stored tree equals the fresh build: same size, same leaves, same root, exactly the tiles
/// its size implies, and every event's leaf found by its cursor.
pub async fn assert_tree_is_fresh_build(db: &TestDb) {
    let leaves = fresh_leaves(db).await;
    let store = AuditStore::new(&db.database);
    let state = store.state().await.unwrap();
    assert_eq!(state.tree_size, leaves.len() as u64, "tree size");
    let stored: Vec<Hash> = store
        .leaf_hashes(0, state.tree_size)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert!(stored == leaves, "stored leaves differ from a fresh build");
    assert_eq!(
        store.root_at(state.tree_size).await.unwrap(),
        merkle::root(&leaves)
    );
    assert_eq!(
        stored_tiles(db).await,
        expected_tiles(state.tree_size),
        "stored tiles"
    );
    // Every event's leaf is found by its journal cursor, in order.
    let events = read_all_settled(&db.database.journal()).await;
    let cursors: Vec<engine::GlobalCursor> = events.iter().map(|e| e.cursor).collect();
    let found = store.leaves_at_cursors(&cursors).await.unwrap();
    for (i, cursor) in cursors.iter().enumerate() {
        assert_eq!(
            found.get(cursor),
            Some(&(i as u64)),
            "leaf of event {cursor}"
        );
    }
}

on_both_backends!(
    concurrent_maintainers_extend_the_tree_exactly_once_to_a_fresh_build,
    a_tree_cut_by_sigkill_resumes_and_equals_a_fresh_build,
    stored_proofs_and_checkpoints_verify_and_track_the_journal,
    a_tree_rebuilt_from_the_journal_reaches_its_stored_checkpoints,
);

async fn concurrent_maintainers_extend_the_tree_exactly_once_to_a_fresh_build(db: &TestDb) {
    seed_runs(db).await;
    seed_raw(db, "a", 1_500, 50).await;
    // Three maintainers race (as three processes on one database would), small batches.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let store = AuditStore::new(&db.database);
        tasks.push(tokio::spawn(async move {
            loop {
                let added = store.extend(97).await.unwrap();
                if added == 0 {
                    let state = store.state().await.unwrap();
                    let rest = store
                        .database()
                        .journal()
                        .read_all(state.cursor, 1)
                        .await
                        .unwrap();
                    if rest.is_empty() {
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // On PostgreSQL the racers may stop below the read horizon (other tests' transactions on the
    // cluster): catch up to every committed event before comparing.
    AuditStore::new(&db.database).catch_up().await.unwrap();
    assert_tree_is_fresh_build(db).await;
    // More events later: the tree continues from where it is.
    seed_raw(db, "b", 333, 7).await;
    AuditStore::new(&db.database).catch_up().await.unwrap();
    assert_tree_is_fresh_build(db).await;
}

async fn a_tree_cut_by_sigkill_resumes_and_equals_a_fresh_build(db: &TestDb) {
    const EVENTS: usize = 30_000;
    seed_raw(db, "k", EVENTS, 250).await;
    let data_dir = db
        .data_dir
        .clone()
        .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
    let store = AuditStore::new(&db.database);
    let child = ServeChild::start(db, &data_dir, &[]);
    // Kill as soon as the first batches are in: mid-extension.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let size = store.state().await.unwrap().tree_size;
        if size >= 1_000 {
            child.kill_9();
            break size;
        }
        assert!(std::time::Instant::now() < deadline, "the tree never grew");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    drop(child);
    let after_kill = store.state().await.unwrap().tree_size;
    assert!(
        after_kill < EVENTS as u64,
        "the kill came too late to cut the extension ({at_kill} then {after_kill} of {EVENTS})"
    );
    let child = ServeChild::start(db, &data_dir, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while store.state().await.unwrap().tree_size < EVENTS as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tree did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_tree_is_fresh_build(db).await;
    // The restarted process checkpoints the whole tree, signed by the configured key.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let latest = loop {
        if let Some(cp) = store.latest_checkpoint().await.unwrap() {
            if cp.tree_size == EVENTS as u64 {
                break cp;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of the whole tree"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    latest.verify(&[test_key().public_key_hex()]).unwrap();
    assert_eq!(
        latest.root_hash,
        hex::encode(merkle::root(&fresh_leaves(db).await))
    );
    // The same key over HTTP, and the checkpoint as stored.
    let http = reqwest::Client::new();
    let served: Value = http
        .get(format!("{}/internal/v1/audit/key", child.base))
        .header("x-oa-runtime-signature", token(&claims()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["public_key"], test_key().public_key_hex());
    assert!(child.terminate().await.success());
}

async fn stored_proofs_and_checkpoints_verify_and_track_the_journal(db: &TestDb) {
    seed_runs(db).await;
    let store = AuditStore::new(&db.database);
    let key = test_key();
    assert!(
        store.checkpoint_now(&key).await.unwrap().is_none(),
        "empty tree: no checkpoint"
    );
    store.catch_up().await.unwrap();
    let a = store.checkpoint_now(&key).await.unwrap().unwrap();
    seed_raw(db, "c", 77, 5).await;
    store.catch_up().await.unwrap();
    // Due by count: 77 new events and a threshold of 50.
    let b = store
        .checkpoint_if_due(&key, 50, Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("due");
    assert_eq!(b.tree_size, a.tree_size + 77);
    assert!(store
        .checkpoint_if_due(&key, 50, Duration::from_secs(3600))
        .await
        .unwrap()
        .is_none());
    for cp in [&a, &b] {
        cp.verify(&[key.public_key_hex()]).unwrap();
    }
    let leaves = fresh_leaves(db).await;
    let root_a: Hash = a.root().unwrap();
    let root_b: Hash = b.root().unwrap();
    assert_eq!(root_a, merkle::root(&leaves[..a.tree_size as usize]));
    let proof = store
        .consistency_proof(a.tree_size, b.tree_size)
        .await
        .unwrap();
    merkle::verify_consistency(a.tree_size, b.tree_size, &root_a, &root_b, &proof).unwrap();
    for index in [0, 1, a.tree_size - 1, a.tree_size, b.tree_size - 1] {
        let proof = store.inclusion_proof(index, b.tree_size).await.unwrap();
        merkle::verify_inclusion(&leaves[index as usize], index, b.tree_size, &proof, &root_b)
            .unwrap();
    }
    let many = store
        .inclusion_proofs(&[2, 5, 9], a.tree_size)
        .await
        .unwrap();
    for (i, index) in [2u64, 5, 9].iter().enumerate() {
        merkle::verify_inclusion(
            &leaves[*index as usize],
            *index,
            a.tree_size,
            &many[i],
            &root_a,
        )
        .unwrap();
    }
    assert!(store.root_at(b.tree_size + 1).await.is_err());
    let stored: Vec<Checkpoint> = store.checkpoints().await.unwrap();
    assert_eq!(stored, vec![a, b]);
    // The defaults are sane: checkpoints within seconds, batches bounded.
    let defaults = MaintainerConfig::default();
    assert!(defaults.checkpoint_every <= Duration::from_secs(60));
    assert!(defaults.batch >= 100);
}

/// What migration 20261207000200 (the tiles) does to a live tree: its storage dropped and its
/// size reset, the checkpoints kept. The maintainer rebuilds the same tree from the journal (same
/// redaction key), signs nothing below the latest checkpoint while it does, and reaches the
/// stored checkpoints' roots.
async fn a_tree_rebuilt_from_the_journal_reaches_its_stored_checkpoints(db: &TestDb) {
    seed_raw(db, "r", 690, 20).await;
    seed_chained_secrets(db, "s", 10).await;
    let store = AuditStore::new(&db.database);
    let key = test_key();
    store.catch_up().await.unwrap();
    let checkpoint = store.checkpoint_now(&key).await.unwrap().unwrap();
    assert_eq!(checkpoint.tree_size, 700);
    let (tiles, tree) = match &db.database {
        engine::Database::Postgres(_) => ("runtime.audit_tree_tiles", "runtime.audit_tree"),
        engine::Database::Sqlite { .. } => ("runtime_audit_tree_tiles", "runtime_audit_tree"),
    };
    for sql in [
        format!("DELETE FROM {tiles}"),
        format!("UPDATE {tree} SET tree_size = 0, cursor_transaction = 0, cursor_position = 0"),
    ] {
        match &db.database {
            engine::Database::Postgres(pool) => sqlx::query(&sql).execute(pool).await.map(drop),
            engine::Database::Sqlite { pool, .. } => {
                sqlx::query(&sql).execute(pool).await.map(drop)
            }
        }
        .unwrap();
    }
    assert_eq!(store.extend(300).await.unwrap(), 300);
    assert!(
        store
            .checkpoint_if_due(&key, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "a checkpoint below the latest was signed while rebuilding"
    );
    store.catch_up().await.unwrap();
    assert_eq!(
        hex::encode(store.root_at(checkpoint.tree_size).await.unwrap()),
        checkpoint.root_hash
    );
    assert_tree_is_fresh_build(db).await;
}

/// `count` events of one aggregate with stored content and chain hashes (as the engine writes
/// them) whose payload or metadata holds a secret field: the tree must redact them the same way
/// when it reads stored text (`LeafBuilder::leaf_raw`) as when it reads parsed events.
async fn seed_chained_secrets(db: &TestDb, id: &str, count: u64) {
    let mut prev: Option<String> = None;
    let mut events = Vec::new();
    for i in 0..count {
        let payload = if i % 2 == 0 {
            serde_json::json!({"label": format!("{id}-{i}"), "preimage_hex": format!("{i:064x}")})
        } else {
            serde_json::json!({"label": format!("{id}-{i}"), "note": "no secret in the payload"})
        };
        let mut metadata = engine::journal::EventMetadata::new();
        metadata.insert("recorded_at".into(), "2026-02-01T00:00:00Z".into());
        if i % 2 == 1 {
            metadata.insert("api_key".into(), format!("key-{i}"));
        }
        let metadata_value = serde_json::to_value(&metadata).unwrap();
        let (content_hash, chain_hash) = aggregates::chain::link(
            prev.as_deref(),
            &aggregates::chain::EventContent {
                aggregate_type: "test",
                aggregate_id: id,
                sequence: i + 1,
                event_type: "test.event",
                event_version: "1.0",
                payload: &payload,
                metadata: &metadata_value,
            },
        );
        metadata.insert(aggregates::chain::CONTENT_HASH_KEY.into(), content_hash);
        metadata.insert(aggregates::chain::CHAIN_HASH_KEY.into(), chain_hash.clone());
        prev = Some(chain_hash);
        events.push(engine::journal::NewEvent {
            event_type: "test.event".into(),
            event_version: "1.0".into(),
            payload,
            metadata,
        });
    }
    db.database
        .journal()
        .append(AppendRequest {
            aggregate_type: "test",
            aggregate_id: id,
            expected_sequence: 0,
            events: &events,
            idempotency: None,
            nonce: None,
        })
        .await
        .unwrap();
}

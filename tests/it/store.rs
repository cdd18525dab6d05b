//! The projection store's conformance suite: every public method of
//! [`SyncStore`](projectors::SyncStore) against its contract, each case on both backends
//! (PostgreSQL and embedded SQLite) through the same calls, driven directly (no runner, no
//! journal) so edge cases are exact: an empty store, paging boundaries, duplicates and replays,
//! gapless watermarks, topic isolation, epochs and retention.

use std::collections::HashSet;

use engine::journal::GlobalCursor;
use engine::testing::TestDb;
use projectors::model::{DocOwner, OwnerFilter};
use projectors::store::{
    epoch_marker_key, BatchCommit, Checkpoint, Committed, DocWrite, HydratePage, NewRow,
    ProjectorSpec, ReadError, Repaired, StoreError, StreamRow, Swapped, Target, TopicState,
};
use projectors::SyncStore;
use serde_json::{json, Value};

use crate::support::on_both_backends;

on_both_backends!(
    register_is_idempotent_and_starts_at_the_beginning,
    the_lease_is_held_by_one_owner_until_released_or_expired,
    commits_allocate_gapless_watermarks_and_move_the_checkpoint,
    a_refused_commit_writes_nothing_and_a_replayed_batch_is_refused,
    topics_are_isolated,
    read_stream_pages_by_watermark_and_filters_by_owner,
    hydrate_pages_in_byte_order_as_of_one_head,
    load_docs_reads_the_given_keys_of_the_live_or_shadow_table,
    a_rebuild_fills_the_shadow_and_swaps_it_in_as_a_new_epoch,
    repair_rewrites_only_divergent_documents,
    prune_raises_the_floor_bounded_by_age_and_count,
    all_docs_and_all_rows_return_everything_in_order,
    payload_text_and_owners_round_trip_exactly,
    joined_pages_hold_the_rows_of_row_pages_as_their_update_objects,
    a_joined_page_reports_damaged_payloads_and_the_source_reads_those_row_by_row,
);

const OWNER: &str = "conformance-owner";
const TTL: i64 = 60_000;

/// A read model with a document table of its own.
const RUNS: ProjectorSpec = ProjectorSpec {
    name: "conformance_runs",
    topic: "conformance.runs",
    table: "sync_run_summaries",
    version: 3,
    docs_are_events: false,
};

/// An event-history read model (pruning removes its documents too).
const EVENTS: ProjectorSpec = ProjectorSpec {
    name: "conformance_events",
    topic: "conformance.events",
    table: "sync_codex_worker_events",
    version: 1,
    docs_are_events: true,
};

fn store_of(db: &TestDb) -> SyncStore {
    SyncStore::new(&db.database, [RUNS, EVENTS])
}

/// Registers `spec` and takes its lease for [`OWNER`] at `now_ms`.
async fn leased(store: &SyncStore, spec: &ProjectorSpec, now_ms: i64) -> Checkpoint {
    store.register(spec, now_ms).await.unwrap();
    store
        .try_acquire(spec.name, OWNER, now_ms, TTL)
        .await
        .unwrap()
        .expect("a fresh projector's lease is free")
}

fn user(id: &str) -> DocOwner {
    DocOwner::user(id)
}

/// One document change of a batch.
struct Change<'a> {
    key: &'a str,
    payload: Value,
    owner: DocOwner,
}

fn change<'a>(key: &'a str, payload: Value, owner: DocOwner) -> Change<'a> {
    Change {
        key,
        payload,
        owner,
    }
}

/// The live batch a projector would commit for `changes` from the stored cursor: one stream row
/// per change (versions counting on from the stored documents) and each document's last state.
async fn live_batch<'a>(
    store: &SyncStore,
    spec: &'a ProjectorSpec,
    changes: &[Change<'_>],
    now_ms: i64,
) -> BatchCommit<'a> {
    let from = store.checkpoint(spec.name).await.unwrap().unwrap().cursor;
    let keys: Vec<String> = changes.iter().map(|c| c.key.to_owned()).collect();
    let mut versions: std::collections::HashMap<String, u64> = store
        .load_docs(spec, Target::Live, &keys)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.doc_key, d.doc_version))
        .collect();
    let mut rows = Vec::new();
    let mut docs: Vec<DocWrite> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let version = versions.get(c.key).map_or(1, |v| v + 1);
        versions.insert(c.key.to_owned(), version);
        let row = NewRow {
            doc_key: c.key.to_owned(),
            doc_version: version,
            payload: c.payload.to_string(),
            payload_hash: aggregates::canonical::hash_canonical(&c.payload),
            owner: c.owner.clone(),
            projected_at_ms: now_ms,
        };
        docs.retain(|d| d.doc_key != c.key);
        docs.push(DocWrite {
            doc_key: row.doc_key.clone(),
            doc_version: version,
            payload: row.payload.clone(),
            payload_hash: row.payload_hash.clone(),
            owner: row.owner.clone(),
            projected_at_ms: now_ms,
            last_row: Some(i),
        });
        rows.push(row);
    }
    BatchCommit {
        spec,
        target: Target::Live,
        owner: OWNER,
        from,
        to: GlobalCursor::new(from.transaction() + 1, 0),
        events: changes.len() as u64 + 1,
        rows,
        docs,
        now_ms,
        lease_ttl_ms: TTL,
    }
}

async fn commit(
    store: &SyncStore,
    spec: &ProjectorSpec,
    changes: &[Change<'_>],
    now_ms: i64,
) -> Committed {
    let batch = live_batch(store, spec, changes, now_ms).await;
    store.commit(batch).await.unwrap()
}

/// `n` changes of distinct documents `{prefix}{i}` owned by alice.
async fn commit_n(store: &SyncStore, spec: &ProjectorSpec, prefix: &str, n: usize, now_ms: i64) {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let changes: Vec<Change<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| change(k, json!({"i": i}), user("alice")))
        .collect();
    commit(store, spec, &changes, now_ms).await;
}

async fn read(
    store: &SyncStore,
    topic: &str,
    after: u64,
    limit: usize,
    filter: &OwnerFilter,
) -> Vec<u64> {
    store
        .read_stream(topic, after, limit, filter)
        .await
        .unwrap()
        .iter()
        .map(|r| r.watermark)
        .collect()
}

async fn state(store: &SyncStore, topic: &str) -> TopicState {
    store.topic_states(&[topic]).await.unwrap().remove(0)
}

fn principal(user: Option<&str>, guest: Option<&str>, org: Option<&str>) -> OwnerFilter {
    OwnerFilter::Principal {
        user_id: user.map(Into::into),
        guest_scope: guest.map(Into::into),
        org_id: org.map(Into::into),
    }
}

async fn register_is_idempotent_and_starts_at_the_beginning(db: &TestDb) {
    let store = store_of(db);
    assert_eq!(store.is_postgres(), db.url.is_some());
    assert_eq!(store.pg_pool().is_some(), db.url.is_some());
    assert_eq!(store.topics(), [EVENTS.topic, RUNS.topic], "sorted");
    assert_eq!(store.spec_of_topic(RUNS.topic), Some(&RUNS));
    assert_eq!(store.spec_of_topic("conformance.nope"), None);
    // The empty store.
    assert!(store.checkpoints().await.unwrap().is_empty());
    assert_eq!(store.checkpoint(RUNS.name).await.unwrap(), None);

    store.register(&RUNS, 1_000).await.unwrap();
    store.register(&EVENTS, 1_000).await.unwrap();
    let first = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert_eq!(
        first,
        Checkpoint {
            projector: RUNS.name.into(),
            topic: RUNS.topic.into(),
            projection_version: 3,
            cursor: GlobalCursor::START,
            events_projected: 0,
            lease_owner: None,
            lease_expires_at_ms: 0,
            rebuild_requested: false,
            rebuild: None,
            last_rebuilt_at_ms: None,
            updated_at_ms: 1_000,
        }
    );
    // Registering again (a restart, another process, a newer version) changes nothing.
    store.register(&RUNS, 2_000).await.unwrap();
    let v9 = ProjectorSpec { version: 9, ..RUNS };
    store.register(&v9, 2_000).await.unwrap();
    assert_eq!(store.checkpoint(RUNS.name).await.unwrap().unwrap(), first);
    assert_eq!(
        state(&store, RUNS.topic).await,
        TopicState {
            topic: RUNS.topic.into(),
            head_watermark: 0,
            retention_floor: 0,
            epoch: 1,
            epoch_start: 0,
        }
    );
    // Nor after the checkpoint moved.
    store
        .try_acquire(RUNS.name, OWNER, 2_000, TTL)
        .await
        .unwrap();
    commit_n(&store, &RUNS, "d", 2, 2_500).await;
    let moved = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    store.register(&RUNS, 3_000).await.unwrap();
    assert_eq!(store.checkpoint(RUNS.name).await.unwrap().unwrap(), moved);
    assert_eq!(state(&store, RUNS.topic).await.head_watermark, 2);
    let names: Vec<String> = store
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.projector)
        .collect();
    assert_eq!(names, [EVENTS.name, RUNS.name], "by name");
}

async fn the_lease_is_held_by_one_owner_until_released_or_expired(db: &TestDb) {
    let store = store_of(db);
    assert_eq!(
        store.try_acquire(RUNS.name, "a", 0, TTL).await.unwrap(),
        None,
        "an unregistered projector has no lease to take"
    );
    store.register(&RUNS, 0).await.unwrap();
    let a = store.try_acquire(RUNS.name, "a", 1_000, 500).await.unwrap();
    let a = a.expect("a free lease is taken");
    assert_eq!(a.lease_owner.as_deref(), Some("a"));
    assert_eq!(a.lease_expires_at_ms, 1_500);
    assert_eq!(
        store.try_acquire(RUNS.name, "b", 1_400, 500).await.unwrap(),
        None,
        "held and not expired"
    );
    let renewed = store.try_acquire(RUNS.name, "a", 1_400, 500).await.unwrap();
    assert_eq!(renewed.unwrap().lease_expires_at_ms, 1_900, "renewed");
    assert_eq!(
        store.try_acquire(RUNS.name, "b", 1_900, 500).await.unwrap(),
        None,
        "expiry is exclusive"
    );
    let b = store.try_acquire(RUNS.name, "b", 1_901, 500).await.unwrap();
    assert_eq!(b.unwrap().lease_owner.as_deref(), Some("b"), "taken over");
    // A stale holder's release is a no-op; the holder's frees it at once.
    store.release(RUNS.name, "a").await.unwrap();
    let held = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert_eq!(held.lease_owner.as_deref(), Some("b"));
    store.release(RUNS.name, "b").await.unwrap();
    let free = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert_eq!((free.lease_owner, free.lease_expires_at_ms), (None, 0));
    assert!(store
        .try_acquire(RUNS.name, "a", 1_902, 500)
        .await
        .unwrap()
        .is_some());
    store.release("conformance_nope", "a").await.unwrap();
}

async fn commits_allocate_gapless_watermarks_and_move_the_checkpoint(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 1_000).await;
    let first = commit(
        &store,
        &RUNS,
        &[
            change("a", json!({"n": 1}), user("alice")),
            change("b", json!({"n": 2}), user("bob")),
            change("a", json!({"n": 3}), user("alice")),
        ],
        2_000,
    )
    .await;
    assert_eq!(
        first,
        Committed {
            head_watermark: 3,
            first_watermark: Some(1),
        }
    );
    // A batch of irrelevant events moves the cursor only.
    let mut empty = live_batch(&store, &RUNS, &[], 2_500).await;
    empty.events = 7;
    assert_eq!(store.commit(empty).await.unwrap(), Committed::default());
    let second = commit(
        &store,
        &RUNS,
        &[
            change("c", json!({"n": 4}), user("alice")),
            change("a", json!({"n": 5}), user("alice")),
        ],
        3_000,
    )
    .await;
    assert_eq!(second.first_watermark, Some(4));
    assert_eq!(second.head_watermark, 5);

    let rows = store.all_rows(RUNS.topic, 0).await.unwrap();
    let summary: Vec<(u64, &str, u64)> = rows
        .iter()
        .map(|r| (r.watermark, r.doc_key.as_str(), r.doc_version))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "a", 1),
            (2, "b", 1),
            (3, "a", 2),
            (4, "c", 1),
            (5, "a", 3)
        ],
        "gapless, in commit order, versions counting per document"
    );
    assert!(rows.iter().all(|r| r.topic == RUNS.topic));
    let docs = store.all_docs(&RUNS).await.unwrap();
    let docs: Vec<(&str, u64, u64, &str)> = docs
        .iter()
        .map(|d| {
            (
                d.doc_key.as_str(),
                d.doc_version,
                d.watermark,
                d.payload.as_str(),
            )
        })
        .collect();
    assert_eq!(
        docs,
        [
            ("a", 3, 5, r#"{"n":5}"#),
            ("b", 1, 2, r#"{"n":2}"#),
            ("c", 1, 4, r#"{"n":4}"#)
        ],
        "each document is its last change, with that change's watermark"
    );
    assert_eq!(state(&store, RUNS.topic).await.head_watermark, 5);
    let checkpoint = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert_eq!(checkpoint.cursor, GlobalCursor::new(3, 0));
    assert_eq!(checkpoint.events_projected, 4 + 7 + 3);
    assert_eq!(checkpoint.lease_expires_at_ms, 3_000 + TTL, "extended");
    assert_eq!(checkpoint.updated_at_ms, 3_000);
}

async fn a_refused_commit_writes_nothing_and_a_replayed_batch_is_refused(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 1_000).await;
    let batch = live_batch(
        &store,
        &RUNS,
        &[change("a", json!({"n": 1}), user("alice"))],
        2_000,
    )
    .await;
    store.commit(batch.clone()).await.unwrap();
    let before = (
        store.checkpoint(RUNS.name).await.unwrap(),
        store.all_rows(RUNS.topic, 0).await.unwrap(),
        store.all_docs(&RUNS).await.unwrap(),
        state(&store, RUNS.topic).await,
    );

    // The same batch again (a retry after an unseen success): exactly once.
    assert!(matches!(
        store.commit(batch.clone()).await,
        Err(StoreError::CursorMoved(p)) if p == RUNS.name
    ));
    let mut stranger = live_batch(
        &store,
        &RUNS,
        &[change("b", json!({}), user("alice"))],
        2_100,
    )
    .await;
    stranger.owner = "someone-else";
    assert!(matches!(
        store.commit(stranger.clone()).await,
        Err(StoreError::LeaseLost(p)) if p == RUNS.name
    ));
    let mut shadow = stranger.clone();
    shadow.owner = OWNER;
    shadow.target = Target::Rebuild;
    assert!(matches!(
        store.commit(shadow).await,
        Err(StoreError::RebuildState { .. })
    ));
    let unknown_spec = ProjectorSpec {
        name: "conformance_unregistered",
        ..RUNS
    };
    let mut unknown = stranger.clone();
    unknown.owner = OWNER;
    unknown.spec = &unknown_spec;
    assert!(matches!(
        store.commit(unknown).await,
        Err(StoreError::UnknownProjector(p)) if p == "conformance_unregistered"
    ));
    let after = (
        store.checkpoint(RUNS.name).await.unwrap(),
        store.all_rows(RUNS.topic, 0).await.unwrap(),
        store.all_docs(&RUNS).await.unwrap(),
        state(&store, RUNS.topic).await,
    );
    assert_eq!(before, after, "refused commits leave no trace");
    // The next commit takes the next watermark: refusals gave theirs back.
    let next = commit(&store, &RUNS, &[change("b", json!({}), user("bob"))], 3_000).await;
    assert_eq!(next.first_watermark, Some(2));
}

async fn topics_are_isolated(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 0).await;
    leased(&store, &EVENTS, 0).await;
    for i in 0..3 {
        commit_n(&store, &RUNS, &format!("r{i}-"), 2, 1_000).await;
        commit_n(&store, &EVENTS, &format!("e{i}-"), 1, 1_000).await;
    }
    assert_eq!(
        read(&store, RUNS.topic, 0, 100, &OwnerFilter::Any).await,
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(
        read(&store, EVENTS.topic, 0, 100, &OwnerFilter::Any).await,
        [1, 2, 3]
    );
    let events = store.all_rows(EVENTS.topic, 0).await.unwrap();
    assert!(events.iter().all(|r| r.doc_key.starts_with('e')));
    assert_eq!(store.all_docs(&EVENTS).await.unwrap().len(), 3);
    assert_eq!(store.all_docs(&RUNS).await.unwrap().len(), 6);
    // States come back in the asked order; a topic never written is a first epoch of zeros.
    let states = store
        .topic_states(&["conformance.none", EVENTS.topic, RUNS.topic])
        .await
        .unwrap();
    let heads: Vec<(&str, u64, u64)> = states
        .iter()
        .map(|s| (s.topic.as_str(), s.head_watermark, s.epoch))
        .collect();
    assert_eq!(
        heads,
        [
            ("conformance.none", 0, 1),
            (EVENTS.topic, 3, 1),
            (RUNS.topic, 6, 1)
        ]
    );
    assert!(store.topic_states(&[]).await.unwrap().is_empty());
    assert_eq!(
        store
            .topic_states(&[RUNS.topic, RUNS.topic])
            .await
            .unwrap()
            .len(),
        2,
        "one state per asked topic, duplicates included"
    );
}

async fn read_stream_pages_by_watermark_and_filters_by_owner(db: &TestDb) {
    let store = store_of(db);
    // The empty store, and a registered topic with no rows.
    assert!(read(&store, RUNS.topic, 0, 10, &OwnerFilter::Any)
        .await
        .is_empty());
    leased(&store, &RUNS, 0).await;
    assert!(read(&store, RUNS.topic, 0, 10, &OwnerFilter::Any)
        .await
        .is_empty());
    let org = |u: Option<&str>, g: Option<&str>, o: Option<&str>| DocOwner {
        user_id: u.map(Into::into),
        guest_scope: g.map(Into::into),
        org_id: o.map(Into::into),
    };
    let owners = [
        org(Some("alice"), None, None),       // 1
        org(Some("bob"), None, None),         // 2
        org(Some("alice"), None, Some("o1")), // 3
        org(None, Some("g1"), None),          // 4
        org(Some("alice"), Some("g1"), None), // 5
        org(None, None, None),                // 6: nobody's
        org(Some("alice"), None, Some("o2")), // 7
    ];
    let keys: Vec<String> = (1..=owners.len()).map(|i| format!("d{i}")).collect();
    let changes: Vec<Change<'_>> = keys
        .iter()
        .zip(&owners)
        .map(|(k, o)| change(k, json!({"k": k}), o.clone()))
        .collect();
    commit(&store, &RUNS, &changes, 1_000).await;

    let any = OwnerFilter::Any;
    assert_eq!(read(&store, RUNS.topic, 0, 3, &any).await, [1, 2, 3]);
    assert_eq!(read(&store, RUNS.topic, 3, 3, &any).await, [4, 5, 6]);
    assert_eq!(read(&store, RUNS.topic, 6, 3, &any).await, [7]);
    assert!(read(&store, RUNS.topic, 7, 3, &any).await.is_empty());
    assert!(read(&store, RUNS.topic, 99, 3, &any).await.is_empty());
    assert!(read(&store, RUNS.topic, 0, 0, &any).await.is_empty());
    assert_eq!(read(&store, RUNS.topic, 0, usize::MAX, &any).await.len(), 7);

    let alice = principal(Some("alice"), None, None);
    assert_eq!(read(&store, RUNS.topic, 0, 10, &alice).await, [1, 5]);
    assert_eq!(
        read(&store, RUNS.topic, 1, 1, &alice).await,
        [5],
        "the limit counts matching rows"
    );
    let alice_o1 = principal(Some("alice"), None, Some("o1"));
    assert_eq!(read(&store, RUNS.topic, 0, 10, &alice_o1).await, [3]);
    let guest = principal(None, Some("g1"), None);
    assert_eq!(read(&store, RUNS.topic, 0, 10, &guest).await, [4, 5]);
    let nobody = principal(None, None, None);
    assert!(read(&store, RUNS.topic, 0, 10, &nobody).await.is_empty());

    let row = &store.read_stream(RUNS.topic, 2, 1, &any).await.unwrap()[0];
    assert_eq!(
        row,
        &StreamRow {
            topic: RUNS.topic.into(),
            watermark: 3,
            doc_key: "d3".into(),
            doc_version: 1,
            payload: r#"{"k":"d3"}"#.into(),
            payload_hash: aggregates::canonical::hash_canonical(&json!({"k": "d3"})),
            owner: owners[2].clone(),
            projected_at_ms: 1_000,
        }
    );
    // A topic nobody registered has no rows (not an error).
    assert!(read(&store, "conformance.none", 0, 10, &any)
        .await
        .is_empty());
}

async fn hydrate_pages_in_byte_order_as_of_one_head(db: &TestDb) {
    let store = store_of(db);
    let any = OwnerFilter::Any;
    assert!(matches!(
        store.hydrate("conformance.none", None, HydratePage::ALL, &any).await,
        Err(ReadError::UnknownTopic(t)) if t == "conformance.none"
    ));
    // A known topic before anything was registered or written.
    let empty = store
        .hydrate(RUNS.topic, None, HydratePage::ALL, &any)
        .await;
    let empty = empty.unwrap();
    assert_eq!(
        (empty.watermark, empty.docs.len(), empty.next_after),
        (0, 0, None)
    );
    leased(&store, &RUNS, 0).await;
    // Byte order: upper case before lower case, '-' (0x2d) before '/' (0x2f), ASCII before é.
    let keys = ["b", "a/", "é", "B", "a-", "a"];
    let changes: Vec<Change<'_>> = keys
        .iter()
        .map(|k| {
            let owner = if *k == "b" {
                user("bob")
            } else {
                user("alice")
            };
            change(k, json!({"k": k}), owner)
        })
        .collect();
    commit(&store, &RUNS, &changes, 1_000).await;
    commit(
        &store,
        &RUNS,
        &[change("a", json!({"v": 2}), user("alice"))],
        2_000,
    )
    .await;
    let sorted = ["B", "a", "a-", "a/", "b", "é"];

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = HydratePage {
            after: after.as_deref(),
            limit: 2,
        };
        let h = store.hydrate(RUNS.topic, None, page, &any).await.unwrap();
        assert_eq!((h.topic.as_str(), h.watermark), (RUNS.topic, 7));
        pages.push(h.docs.iter().map(|d| d.doc_key.clone()).collect::<Vec<_>>());
        match h.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [["B", "a"], ["a-", "a/"], ["b", "é"]],
        "no empty last page"
    );
    let all = store
        .hydrate(RUNS.topic, None, HydratePage::ALL, &any)
        .await;
    let all = all.unwrap();
    assert_eq!(
        all.docs
            .iter()
            .map(|d| d.doc_key.as_str())
            .collect::<Vec<_>>(),
        sorted
    );
    assert_eq!(all.next_after, None);
    let a = all.docs.iter().find(|d| d.doc_key == "a").unwrap();
    assert_eq!(
        (a.doc_version, a.watermark, a.payload.as_str()),
        (2, 7, r#"{"v":2}"#)
    );
    let six = HydratePage {
        after: None,
        limit: 6,
    };
    let exact = store.hydrate(RUNS.topic, None, six, &any).await.unwrap();
    assert_eq!(
        (exact.docs.len(), exact.next_after),
        (6, None),
        "a full last page"
    );
    let past = HydratePage {
        after: Some("é"),
        limit: 2,
    };
    let past = store.hydrate(RUNS.topic, None, past, &any).await.unwrap();
    assert!(past.docs.is_empty() && past.next_after.is_none());

    let one = store
        .hydrate(RUNS.topic, Some("a-"), HydratePage::ALL, &any)
        .await
        .unwrap();
    assert_eq!(one.docs.len(), 1);
    assert_eq!(one.docs[0].doc_key, "a-");
    let missing = store
        .hydrate(RUNS.topic, Some("zz"), HydratePage::ALL, &any)
        .await
        .unwrap();
    assert_eq!((missing.watermark, missing.docs.len()), (7, 0));
    let bob = principal(Some("bob"), None, None);
    let bobs = store
        .hydrate(RUNS.topic, None, HydratePage::ALL, &bob)
        .await;
    let bobs = bobs.unwrap();
    assert_eq!(
        bobs.docs
            .iter()
            .map(|d| d.doc_key.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let not_bobs = store
        .hydrate(RUNS.topic, Some("a"), HydratePage::ALL, &bob)
        .await
        .unwrap();
    assert!(not_bobs.docs.is_empty(), "a named document is filtered too");
}

async fn load_docs_reads_the_given_keys_of_the_live_or_shadow_table(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 0).await;
    assert!(store
        .load_docs(&RUNS, Target::Live, &["a".into()])
        .await
        .unwrap()
        .is_empty());
    commit(
        &store,
        &RUNS,
        &[
            change("a", json!({"n": 1}), user("alice")),
            change("it's \"quoted\"", json!({"n": 2}), user("alice")),
            change("c", json!({"n": 3}), user("alice")),
        ],
        1_000,
    )
    .await;
    assert!(store
        .load_docs(&RUNS, Target::Live, &[])
        .await
        .unwrap()
        .is_empty());
    let keys: Vec<String> = ["it's \"quoted\"", "a", "missing", "a"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    let found = store.load_docs(&RUNS, Target::Live, &keys).await.unwrap();
    let found: HashSet<String> = found.into_iter().map(|d| d.doc_key).collect();
    assert_eq!(
        found,
        HashSet::from(["a".to_owned(), "it's \"quoted\"".to_owned()]),
        "the stored ones among the keys, each once"
    );
    let many: Vec<String> = (0..1_500)
        .map(|i| format!("k{i}"))
        .chain(["c".into()])
        .collect();
    let c = store.load_docs(&RUNS, Target::Live, &many).await.unwrap();
    assert_eq!(c.len(), 1, "a long key list");
    assert_eq!(c[0].doc_key, "c");
    assert!(
        store
            .load_docs(&RUNS, Target::Rebuild, &keys)
            .await
            .unwrap()
            .is_empty(),
        "the shadow table is separate"
    );
}

async fn a_rebuild_fills_the_shadow_and_swaps_it_in_as_a_new_epoch(db: &TestDb) {
    let store = store_of(db);
    assert!(
        !store.request_rebuild(RUNS.name, 0).await.unwrap(),
        "unknown"
    );
    leased(&store, &RUNS, 0).await;
    for i in 0..3 {
        commit_n(&store, &RUNS, &format!("v{i}-"), 2, 1_000).await;
    }
    assert!(matches!(
        store.finish_rebuild(&RUNS, OWNER, 1_500).await,
        Err(StoreError::RebuildState { .. })
    ));
    assert!(store.request_rebuild(RUNS.name, 2_000).await.unwrap());
    let requested = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert!(requested.rebuild_requested);
    assert!(matches!(
        store.begin_rebuild(&RUNS, "someone-else", 2_500).await,
        Err(StoreError::LeaseLost(_))
    ));
    let spec_v4 = ProjectorSpec { version: 4, ..RUNS };
    store.begin_rebuild(&spec_v4, OWNER, 3_000).await.unwrap();
    let started = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert!(!started.rebuild_requested);
    let rebuild = started.rebuild.clone().unwrap();
    assert_eq!(
        (
            rebuild.version,
            rebuild.cursor,
            rebuild.events,
            rebuild.started_at_ms
        ),
        (4, GlobalCursor::START, 0, 3_000)
    );
    assert!(matches!(
        store
            .repair_docs(&RUNS, 3_000, false, |_| async { Ok(Vec::new()) })
            .await,
        Err(StoreError::RebuildState { .. })
    ));

    // Rebuild batches fill the shadow only: no stream rows, the live documents untouched.
    let live_before = store.all_docs(&RUNS).await.unwrap();
    let shadow_doc = |key: &str, n: u64| DocWrite {
        doc_key: key.into(),
        doc_version: n,
        payload: json!({"rebuilt": n}).to_string(),
        payload_hash: aggregates::canonical::hash_canonical(&json!({"rebuilt": n})),
        owner: user("alice"),
        projected_at_ms: 3_500,
        last_row: None,
    };
    let shadow = BatchCommit {
        spec: &spec_v4,
        target: Target::Rebuild,
        owner: OWNER,
        from: GlobalCursor::START,
        to: GlobalCursor::new(2, 0),
        events: 5,
        rows: Vec::new(),
        docs: vec![shadow_doc("x", 1), shadow_doc("y", 2)],
        now_ms: 3_500,
        lease_ttl_ms: TTL,
    };
    assert_eq!(
        store.commit(shadow.clone()).await.unwrap(),
        Committed::default()
    );
    assert!(matches!(
        store.commit(shadow.clone()).await,
        Err(StoreError::CursorMoved(_))
    ));
    let shadow_more = BatchCommit {
        from: GlobalCursor::new(2, 0),
        to: GlobalCursor::new(3, 0),
        docs: vec![shadow_doc("z", 1)],
        ..shadow
    };
    store.commit(shadow_more).await.unwrap();
    assert_eq!(store.all_docs(&RUNS).await.unwrap(), live_before);
    assert_eq!(state(&store, RUNS.topic).await.head_watermark, 6);
    let in_shadow = store
        .load_docs(&RUNS, Target::Rebuild, &["x".into(), "z".into()])
        .await
        .unwrap();
    assert_eq!(in_shadow.len(), 2);
    assert!(in_shadow.iter().all(|d| d.watermark == 0));
    let during = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert_eq!(
        during.cursor,
        GlobalCursor::new(3, 0),
        "the live cursor stays"
    );
    assert_eq!(during.rebuild.unwrap().cursor, GlobalCursor::new(3, 0));

    assert!(matches!(
        store.finish_rebuild(&RUNS, "someone-else", 4_000).await,
        Err(StoreError::LeaseLost(_))
    ));
    let swapped = store.finish_rebuild(&RUNS, OWNER, 4_000).await.unwrap();
    assert_eq!(
        swapped,
        Swapped {
            epoch: 2,
            epoch_start: 7,
            docs: 3,
        }
    );
    assert_eq!(
        state(&store, RUNS.topic).await,
        TopicState {
            topic: RUNS.topic.into(),
            head_watermark: 7,
            retention_floor: 7,
            epoch: 2,
            epoch_start: 7,
        }
    );
    let docs = store.all_docs(&RUNS).await.unwrap();
    let docs: Vec<(&str, u64, u64)> = docs
        .iter()
        .map(|d| (d.doc_key.as_str(), d.doc_version, d.watermark))
        .collect();
    assert_eq!(
        docs,
        [("x", 1, 7), ("y", 2, 7), ("z", 1, 7)],
        "consistent with the marker"
    );
    assert!(store
        .load_docs(&RUNS, Target::Rebuild, &["x".into()])
        .await
        .unwrap()
        .is_empty());
    // Every cursor of the old epoch is stale, the old head included; the marker is no reader's.
    for after in [0, 6] {
        assert!(matches!(
            store.read_stream(RUNS.topic, after, 10, &OwnerFilter::Any).await,
            Err(ReadError::Stale { state, .. }) if state.epoch == 2 && state.retention_floor == 7
        ));
    }
    assert!(read(&store, RUNS.topic, 7, 10, &OwnerFilter::Any)
        .await
        .is_empty());
    let done = store.checkpoint(RUNS.name).await.unwrap().unwrap();
    assert_eq!(
        (done.cursor, done.events_projected, done.projection_version),
        (GlobalCursor::new(3, 0), 10, 4)
    );
    assert_eq!((done.rebuild, done.last_rebuilt_at_ms), (None, Some(4_000)));
    // The next live change follows the marker.
    let next = commit(
        &store,
        &RUNS,
        &[change("x", json!({}), user("alice"))],
        5_000,
    )
    .await;
    assert_eq!(next.first_watermark, Some(8));
    let rows = store.all_rows(RUNS.topic, 7).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].doc_key.as_str(), rows[0].doc_version), ("x", 2));
    assert_ne!(rows[0].doc_key, epoch_marker_key(RUNS.topic));
}

async fn repair_rewrites_only_divergent_documents(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 0).await;
    commit(
        &store,
        &RUNS,
        &[
            change("same", json!({"n": 1}), user("alice")),
            change("drifted", json!({"n": 2}), user("alice")),
            change("moved", json!({"n": 3}), user("alice")),
        ],
        1_000,
    )
    .await;
    let doc = |key: &str, payload: Value, owner: DocOwner| DocWrite {
        doc_key: key.into(),
        doc_version: 99,
        payload: payload.to_string(),
        payload_hash: aggregates::canonical::hash_canonical(&payload),
        owner,
        projected_at_ms: 2_000,
        last_row: None,
    };
    let computed = vec![
        doc("same", json!({"n": 1}), user("alice")),
        doc("drifted", json!({"n": 20}), user("alice")),
        doc("moved", json!({"n": 3}), user("bob")),
        doc("absent", json!({"n": 4}), user("alice")),
    ];
    let only_existing = store
        .repair_docs(&RUNS, 2_000, true, |cursor| {
            let computed = computed.clone();
            async move {
                assert_eq!(cursor, GlobalCursor::new(1, 0), "the projector's cursor");
                Ok(computed)
            }
        })
        .await
        .unwrap();
    assert_eq!(
        only_existing,
        [
            ("same".to_owned(), Repaired::Unchanged),
            (
                "drifted".to_owned(),
                Repaired::Written {
                    doc_version: 2,
                    watermark: 4
                }
            ),
            (
                "moved".to_owned(),
                Repaired::Written {
                    doc_version: 2,
                    watermark: 5
                }
            ),
        ],
        "an owner change is a difference; an absent document is left alone"
    );
    let rows = store.all_rows(RUNS.topic, 3).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.doc_key.as_str()).collect::<Vec<_>>(),
        ["drifted", "moved"]
    );
    let stored = store
        .load_docs(&RUNS, Target::Live, &["drifted".into()])
        .await
        .unwrap();
    assert_eq!(
        (
            stored[0].payload.as_str(),
            stored[0].watermark,
            stored[0].doc_version
        ),
        (r#"{"n":20}"#, 4, 2)
    );
    let all = store
        .repair_docs(&RUNS, 3_000, false, |_| async { Ok(computed) })
        .await
        .unwrap();
    assert_eq!(
        all.last().unwrap(),
        &(
            "absent".to_owned(),
            Repaired::Written {
                doc_version: 1,
                watermark: 6
            }
        )
    );
    assert_eq!(all.len(), 4);
    assert!(
        all[..3].iter().all(|(_, r)| *r == Repaired::Unchanged),
        "idempotent"
    );
    // A failing computation writes nothing.
    let failed = store
        .repair_docs(&RUNS, 4_000, false, |_| async {
            Err(StoreError::Corrupt("computation failed".into()))
        })
        .await;
    assert!(matches!(failed, Err(StoreError::Corrupt(_))));
    assert_eq!(state(&store, RUNS.topic).await.head_watermark, 6);
    let unknown = ProjectorSpec {
        name: "conformance_unregistered",
        ..RUNS
    };
    assert!(matches!(
        store
            .repair_docs(&unknown, 0, false, |_| async { Ok(Vec::new()) })
            .await,
        Err(StoreError::UnknownProjector(_))
    ));
}

async fn prune_raises_the_floor_bounded_by_age_and_count(db: &TestDb) {
    let store = store_of(db);
    assert_eq!(
        store.prune(&RUNS, i64::MAX, 100, 0).await.unwrap(),
        projectors::store::Pruned::default(),
        "an unregistered topic"
    );
    leased(&store, &RUNS, 0).await;
    leased(&store, &EVENTS, 0).await;
    // Rows 1..=3 inserted at 100, 4..=5 at 200, 6 at 300.
    commit_n(&store, &RUNS, "a", 3, 100).await;
    commit_n(&store, &RUNS, "b", 2, 200).await;
    commit_n(&store, &RUNS, "c", 1, 300).await;
    let pruned = store.prune(&RUNS, 100, 100, 400).await.unwrap();
    assert_eq!(
        (pruned.rows, pruned.retention_floor),
        (0, 0),
        "cutoff is exclusive"
    );
    let pruned = store.prune(&RUNS, 250, 2, 400).await.unwrap();
    assert_eq!(
        (pruned.rows, pruned.docs, pruned.retention_floor),
        (2, 0, 2),
        "at most max_rows, oldest first"
    );
    let pruned = store.prune(&RUNS, 250, 100, 400).await.unwrap();
    assert_eq!(
        (pruned.rows, pruned.retention_floor),
        (3, 5),
        "only rows older than the cutoff"
    );
    let pruned = store.prune(&RUNS, 250, 100, 400).await.unwrap();
    assert_eq!(
        (pruned.rows, pruned.retention_floor),
        (0, 5),
        "nothing left to prune"
    );
    assert!(matches!(
        store.read_stream(RUNS.topic, 4, 10, &OwnerFilter::Any).await,
        Err(ReadError::Stale { after: 4, state }) if state.retention_floor == 5 && state.head_watermark == 6
    ));
    assert_eq!(
        read(&store, RUNS.topic, 5, 10, &OwnerFilter::Any).await,
        [6]
    );
    assert_eq!(
        store.all_docs(&RUNS).await.unwrap().len(),
        6,
        "documents stay"
    );
    assert_eq!(
        store.all_rows(RUNS.topic, 0).await.unwrap().len(),
        1,
        "from the floor on"
    );

    // Event histories lose their old documents too, as many as max_rows per call.
    commit_n(&store, &EVENTS, "e", 3, 100).await;
    commit_n(&store, &EVENTS, "f", 1, 300).await;
    let pruned = store.prune(&EVENTS, 250, 2, 400).await.unwrap();
    assert_eq!(
        (pruned.rows, pruned.docs, pruned.retention_floor),
        (2, 2, 2)
    );
    let pruned = store.prune(&EVENTS, 250, 2, 400).await.unwrap();
    assert_eq!(
        (pruned.rows, pruned.docs, pruned.retention_floor),
        (1, 1, 3)
    );
    let left = store.all_docs(&EVENTS).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].doc_key, "f0");
}

async fn all_docs_and_all_rows_return_everything_in_order(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 0).await;
    assert!(store.all_docs(&RUNS).await.unwrap().is_empty());
    assert!(store.all_rows(RUNS.topic, 0).await.unwrap().is_empty());
    // More than one internal page (5,000 rows) of all_rows.
    commit_n(&store, &RUNS, "k", 3_000, 100).await;
    commit_n(&store, &RUNS, "k", 2_003, 200).await;
    let rows = store.all_rows(RUNS.topic, 0).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.watermark).collect::<Vec<_>>(),
        (1..=5_003).collect::<Vec<_>>()
    );
    assert_eq!(store.all_rows(RUNS.topic, 5_000).await.unwrap().len(), 3);
    let docs = store.all_docs(&RUNS).await.unwrap();
    assert_eq!(docs.len(), 3_000);
    let keys: Vec<&str> = docs.iter().map(|d| d.doc_key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "by key in byte order");
    assert!(docs
        .iter()
        .filter(|d| d.doc_version == 2)
        .all(|d| d.watermark > 3_000));
    assert_eq!(docs.iter().filter(|d| d.doc_version == 2).count(), 2_003);
}

async fn payload_text_and_owners_round_trip_exactly(db: &TestDb) {
    let store = store_of(db);
    leased(&store, &RUNS, 0).await;
    // Not canonical (keys out of order), with escapes and non-ASCII: stored and read back as
    // the projector wrote it, on the stream and in the document.
    let text = r#"{"z":1,"a":"é \"q\" \\ \n","n":[1.5,null,true],"e":{}}"#;
    let payload: Value = serde_json::from_str(text).unwrap();
    let full = DocOwner {
        user_id: Some("u".into()),
        guest_scope: Some("g".into()),
        org_id: Some("o".into()),
    };
    let mut batch = live_batch(
        &store,
        &RUNS,
        &[
            change("text", payload.clone(), full.clone()),
            change("nobody", json!({}), DocOwner::default()),
        ],
        1_000,
    )
    .await;
    batch.rows[0].payload = text.to_owned();
    batch.docs[0].payload = text.to_owned();
    store.commit(batch).await.unwrap();
    let rows = store.all_rows(RUNS.topic, 0).await.unwrap();
    assert_eq!(rows[0].payload, text);
    assert_eq!(rows[0].owner, full);
    assert_eq!(rows[1].owner, DocOwner::default());
    assert_eq!(
        rows[0].payload_hash,
        aggregates::canonical::hash_canonical(&payload)
    );
    let docs = store.all_docs(&RUNS).await.unwrap();
    let doc = docs.iter().find(|d| d.doc_key == "text").unwrap();
    assert_eq!((doc.payload.as_str(), &doc.owner), (text, &full));
    let hydrated = store
        .hydrate(
            RUNS.topic,
            Some("text"),
            HydratePage::ALL,
            &OwnerFilter::Any,
        )
        .await
        .unwrap();
    assert_eq!(hydrated.docs[0].payload, text);
}

/// The update objects of `rows` as the gateway writes them for live rows, comma-joined: what a
/// joined page of the same rows must hold, byte for byte.
fn prepared_join(rows: &[StreamRow], max_update_bytes: usize) -> String {
    rows.iter()
        .map(|r| {
            let row = sync_gateway::source::StreamRow {
                topic: r.topic.clone(),
                watermark: r.watermark,
                doc_key: r.doc_key.clone(),
                doc_version: r.doc_version,
                payload: r.payload.clone(),
                payload_hash: r.payload_hash.clone(),
                owner: r.owner.clone(),
            };
            sync_gateway::hub::PreparedRow::prepare(&row, max_update_bytes)
                .json
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn joined_pages_hold_the_rows_of_row_pages_as_their_update_objects(db: &TestDb) {
    let store = store_of(db);
    let empty = store
        .read_stream_joined(RUNS.topic, 0, 10, &OwnerFilter::Any, 1024)
        .await
        .unwrap();
    assert_eq!(
        (empty.rows, empty.json.as_str(), empty.state.epoch),
        (0, "", 1),
        "a topic nothing was written to"
    );
    leased(&store, &RUNS, 0).await;
    // Keys and payloads that JSON must escape (quotes, backslashes, every kind of control
    // character, non-ASCII), a payload that goes out as a pointer, and several owners.
    let keys = [
        "plain".to_owned(),
        "q\"uote\\back/slash".to_owned(),
        "ctl\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}".to_owned(),
        "é ünïcødé 🚀 \u{2028}".to_owned(),
        "big".to_owned(),
        "bob's".to_owned(),
        "guest".to_owned(),
    ];
    let payloads = [
        json!({"k": 1}),
        json!({"s": "a\"b\\c\n\u{1}", "n": [1.5, null, true], "e": {}}),
        json!({"z": 1, "a": 2}),
        json!({"t": "日本語 🚀"}),
        json!({"blob": "x".repeat(300)}),
        json!({}),
        json!({"g": true}),
    ];
    let owners = [
        user("alice"),
        user("alice"),
        DocOwner {
            user_id: Some("alice".into()),
            guest_scope: None,
            org_id: Some("o1".into()),
        },
        user("alice"),
        user("alice"),
        user("bob"),
        DocOwner {
            user_id: None,
            guest_scope: Some("g1".into()),
            org_id: None,
        },
    ];
    let changes: Vec<Change<'_>> = keys
        .iter()
        .zip(payloads)
        .zip(owners)
        .map(|((k, p), o)| change(k, p, o))
        .collect();
    commit(&store, &RUNS, &changes, 1_000).await;
    commit(&store, &RUNS, &changes[..2], 2_000).await; // versions 2
    let head = state(&store, RUNS.topic).await.head_watermark;
    assert_eq!(head, 9);
    let filters = [
        OwnerFilter::Any,
        principal(Some("alice"), None, None),
        principal(Some("alice"), None, Some("o1")),
        principal(None, Some("g1"), None),
        principal(Some("nobody"), None, None),
    ];
    let max_update_bytes = 200;
    let mut compared = 0;
    for filter in &filters {
        for after in 0..=head {
            for limit in [1, 2, 3, 1000] {
                let rows = store
                    .read_stream_page(RUNS.topic, after, limit, filter)
                    .await
                    .unwrap();
                let joined = store
                    .read_stream_joined(RUNS.topic, after, limit, filter, max_update_bytes)
                    .await
                    .unwrap();
                let context = format!("{filter:?} after {after} limit {limit}");
                assert_eq!(joined.state, rows.state, "{context}");
                assert_eq!(joined.rows, rows.rows.len(), "{context}");
                assert_eq!(
                    joined.last_watermark,
                    rows.rows.last().map_or(0, |r| r.watermark),
                    "{context}"
                );
                assert_eq!(joined.damaged, 0, "{context}");
                assert_eq!(
                    joined.json,
                    prepared_join(&rows.rows, max_update_bytes),
                    "{context}"
                );
                let sorted = store
                    .read_stream_joined_sorted(RUNS.topic, after, limit, filter, max_update_bytes)
                    .await
                    .unwrap();
                assert_eq!(
                    sorted, joined,
                    "{context}: the sorted form, as the fallback reads"
                );
                compared += joined.rows;
            }
        }
    }
    assert!(compared > 50, "the pages held rows: {compared}");
    // The pointer: its payload is `null`, and it still parses as an update object.
    let all = store
        .read_stream_joined(RUNS.topic, 0, 1000, &OwnerFilter::Any, max_update_bytes)
        .await
        .unwrap();
    let updates: Vec<Value> = serde_json::from_str(&format!("[{}]", all.json)).unwrap();
    assert_eq!(updates.len(), 9);
    let big = updates.iter().find(|u| u["doc_key"] == "big").unwrap();
    assert_eq!(
        (&big["payload"], &big["hydration_required"]),
        (&Value::Null, &json!(true))
    );
    assert_eq!(updates[1]["doc_key"], keys[1].as_str());
    assert_eq!(updates[2]["doc_key"], keys[2].as_str());
    // Stale below the floor, as the row read is.
    store.prune(&RUNS, i64::MAX, 3, 3_000).await.unwrap();
    assert!(matches!(
        store
            .read_stream_joined(RUNS.topic, 2, 10, &OwnerFilter::Any, 1024)
            .await,
        Err(ReadError::Stale { after: 2, .. })
    ));
    let rest = store
        .read_stream_joined(RUNS.topic, 3, 10, &OwnerFilter::Any, 1024)
        .await
        .unwrap();
    assert_eq!((rest.rows, rest.last_watermark), (6, 9));
}

async fn a_joined_page_reports_damaged_payloads_and_the_source_reads_those_row_by_row(db: &TestDb) {
    use sync_gateway::source::{SourceError, StoreSource, SyncSource};
    let store = store_of(db);
    leased(&store, &RUNS, 0).await;
    let mut batch = live_batch(
        &store,
        &RUNS,
        &[
            change("fine", json!({"a": 1}), user("alice")),
            change("damaged", json!({}), user("alice")),
        ],
        1_000,
    )
    .await;
    batch.rows[1].payload = "[1]".to_owned();
    store.commit(batch).await.unwrap();
    let page = store
        .read_stream_joined(RUNS.topic, 0, 10, &OwnerFilter::Any, 1024)
        .await
        .unwrap();
    assert_eq!((page.rows, page.damaged), (2, 1));
    let clean = store
        .read_stream_joined(RUNS.topic, 0, 1, &OwnerFilter::Any, 1024)
        .await
        .unwrap();
    assert_eq!((clean.rows, clean.damaged), (1, 0));
    let joins = store.prefers_joined_pages();
    assert_eq!(
        joins,
        matches!(db.database, engine::Database::Sqlite { .. }),
        "SQLite joins pages, PostgreSQL reads rows"
    );
    let source = StoreSource::new(store, std::sync::Arc::new(projectors::SyncNotifier::new()));
    assert!(
        source
            .read_stream_joined(RUNS.topic, 0, 10, &OwnerFilter::Any, 1024)
            .await
            .unwrap()
            .is_none(),
        "a page with a damaged row is not joined"
    );
    let joined = source
        .read_stream_joined(RUNS.topic, 0, 1, &OwnerFilter::Any, 1024)
        .await
        .unwrap();
    if joins {
        let joined = joined.expect("a clean page is joined");
        assert_eq!(
            (joined.rows, joined.last_watermark, joined.head_watermark),
            (1, 1, 2)
        );
    } else {
        assert!(joined.is_none(), "the source reads PostgreSQL row by row");
    }
    assert!(matches!(
        source
            .read_stream_page(RUNS.topic, 0, 10, &OwnerFilter::Any)
            .await,
        Err(SourceError::Unavailable(_))
    ));
}

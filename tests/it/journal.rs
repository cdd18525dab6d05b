//! The journal conformance suite: every test here runs against both backends (PostgreSQL with
//! the postgres-es tables, and embedded SQLite), plus PostgreSQL-only tests for the
//! slow-transaction case and postgres-es interoperability.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aggregates::run::Run;
use engine::journal::{
    AppendRequest, GlobalCursor, Journal, JournalError, NewIdempotencyRecord, NewNonce,
};
use engine::testing::TestDb;

use crate::support::{on_both_backends, raw_event, read_all_settled, ts};

on_both_backends!(
    appends_and_loads_one_aggregate_in_sequence_order,
    a_stale_expected_sequence_is_a_conflict_and_writes_nothing,
    an_idempotency_record_is_written_with_its_events_or_not_at_all,
    a_token_nonce_is_written_with_its_events_or_not_at_all,
    every_shape_of_append_writes_exactly_its_parts,
    read_all_returns_every_event_once_in_order_across_pages,
    events_survive_closing_and_reopening_the_database,
    concurrent_appenders_lose_nothing_and_duplicate_nothing,
    appends_committed_together_fail_alone,
    an_open_write_transaction_is_never_skipped_by_the_global_reader,
);

fn append<'a>(
    id: &'a str,
    expected: u64,
    events: &'a [engine::journal::NewEvent],
) -> AppendRequest<'a> {
    AppendRequest {
        aggregate_type: "run",
        aggregate_id: id,
        expected_sequence: expected,
        events,
        idempotency: None,
        nonce: None,
    }
}

async fn appends_and_loads_one_aggregate_in_sequence_order(db: &TestDb) {
    let journal = db.database.journal();
    let first = [raw_event("a"), raw_event("b")];
    let written = journal.append(append("r1", 0, &first)).await.unwrap();
    assert_eq!(written.last_sequence, 2);
    assert_eq!(written.cursors.len(), 2);
    assert!(written.cursors[0] < written.cursors[1]);
    journal
        .append(append("r1", 2, &[raw_event("c")]))
        .await
        .unwrap();
    journal
        .append(append("other", 0, &[raw_event("x")]))
        .await
        .unwrap();

    let events = journal.load::<Run>("r1", 0).await.unwrap();
    let labels: Vec<_> = events
        .iter()
        .map(|e| e.payload["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels, ["a", "b", "c"]);
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[0].event_type, "test.event");
    assert_eq!(events[0].event_version, "1.0");
    assert_eq!(events[0].metadata["recorded_at"], "2026-02-01T00:00:00Z");

    let tail = journal.load::<Run>("r1", 2).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].sequence, 3);
    assert!(journal.load::<Run>("missing", 0).await.unwrap().is_empty());
}

async fn a_stale_expected_sequence_is_a_conflict_and_writes_nothing(db: &TestDb) {
    let journal = db.database.journal();
    journal
        .append(append("r1", 0, &[raw_event("first")]))
        .await
        .unwrap();
    let error = journal
        .append(append(
            "r1",
            0,
            &[raw_event("loser-1"), raw_event("loser-2")],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            JournalError::Conflict {
                expected_sequence: 0,
                ..
            }
        ),
        "{error:?}"
    );
    let events = journal.load::<Run>("r1", 0).await.unwrap();
    assert_eq!(
        events.len(),
        1,
        "a conflicting batch must write none of its events"
    );
    assert_eq!(events[0].payload["label"], "first");
    assert!(matches!(
        journal.append(append("r1", 0, &[])).await,
        Err(JournalError::InvalidAppend(_))
    ));
}

async fn an_idempotency_record_is_written_with_its_events_or_not_at_all(db: &TestDb) {
    let journal = db.database.journal();
    let record = NewIdempotencyRecord {
        scope: "user:1".into(),
        key: "key-1".into(),
        request_hash: "sha256:abc".into(),
        created_at: ts("2026-02-01T00:00:00Z"),
    };
    let events = [raw_event("a"), raw_event("b")];
    journal
        .append(AppendRequest {
            idempotency: Some(&record),
            ..append("r1", 0, &events)
        })
        .await
        .unwrap();
    let stored = journal
        .find_idempotency("user:1", "key-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.aggregate_type, "run");
    assert_eq!(stored.aggregate_id, "r1");
    assert_eq!((stored.first_sequence, stored.last_sequence), (1, 2));
    assert_eq!(stored.request_hash, "sha256:abc");
    assert_eq!(stored.created_at, ts("2026-02-01T00:00:00Z"));
    assert!(journal
        .find_idempotency("user:2", "key-1")
        .await
        .unwrap()
        .is_none());

    // The same key again (even for another aggregate) is refused and writes no events.
    let error = journal
        .append(AppendRequest {
            idempotency: Some(&record),
            ..append("r2", 0, &[raw_event("dup")])
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, JournalError::IdempotencyKeyTaken),
        "{error:?}"
    );
    assert!(journal.load::<Run>("r2", 0).await.unwrap().is_empty());

    // A conflicting append writes no idempotency record either.
    let other = NewIdempotencyRecord {
        key: "key-2".into(),
        ..record.clone()
    };
    let error = journal
        .append(AppendRequest {
            idempotency: Some(&other),
            ..append("r1", 0, &[raw_event("late")])
        })
        .await
        .unwrap_err();
    assert!(matches!(error, JournalError::Conflict { .. }));
    assert!(journal
        .find_idempotency("user:1", "key-2")
        .await
        .unwrap()
        .is_none());
}

async fn a_token_nonce_is_written_with_its_events_or_not_at_all(db: &TestDb) {
    let journal = db.database.journal();
    let nonce = NewNonce {
        nonce: "nonce-j1".into(),
        expires_at_unix: 4_000_000_000,
    };
    journal
        .append(AppendRequest {
            nonce: Some(&nonce),
            ..append("r1", 0, &[raw_event("a")])
        })
        .await
        .unwrap();
    // The same nonce again, on another aggregate: refused, nothing written.
    let error = journal
        .append(AppendRequest {
            nonce: Some(&nonce),
            ..append("r2", 0, &[raw_event("b")])
        })
        .await
        .unwrap_err();
    assert!(matches!(error, JournalError::NonceTaken), "{error:?}");
    assert!(journal.load::<Run>("r2", 0).await.unwrap().is_empty());
    // The nonce store sees it as used.
    let store = engine::auth::NonceStore::new(db.database.clone());
    assert!(matches!(
        store.consume("nonce-j1", 4_000_000_000, 1_000).await,
        Err(engine::auth::AuthError::Replayed)
    ));
    // A conflicting append does not spend its nonce.
    let fresh = NewNonce {
        nonce: "nonce-j2".into(),
        ..nonce
    };
    let error = journal
        .append(AppendRequest {
            nonce: Some(&fresh),
            ..append("r1", 0, &[raw_event("late")])
        })
        .await
        .unwrap_err();
    assert!(matches!(error, JournalError::Conflict { .. }), "{error:?}");
    store
        .consume("nonce-j2", 4_000_000_000, 1_000)
        .await
        .unwrap();
}

/// Every shape an append takes (PostgreSQL builds one statement per shape): one event or
/// several, with or without an idempotency record, with or without a nonce. Each writes its
/// events in order, its record and its nonce when it has them, and nothing it does not have; a
/// stale sequence in each shape writes none of its parts.
async fn every_shape_of_append_writes_exactly_its_parts(db: &TestDb) {
    let journal = db.database.journal();
    let nonces = engine::auth::NonceStore::new(db.database.clone());
    for shape in 0..8u8 {
        let (batch, with_key, with_nonce) = (shape & 4 != 0, shape & 2 != 0, shape & 1 != 0);
        let id = format!("shape-{shape}");
        let events: Vec<_> = (0..if batch { 3 } else { 1 })
            .map(|n| raw_event(&format!("{id}-{n}")))
            .collect();
        let record = NewIdempotencyRecord {
            scope: "user:shape".into(),
            key: format!("key-{shape}"),
            request_hash: format!("sha256:{shape}"),
            created_at: ts("2026-02-01T00:00:00Z"),
        };
        let nonce = NewNonce {
            nonce: format!("nonce-shape-{shape}"),
            expires_at_unix: 4_000_000_000,
        };
        let request = |expected| AppendRequest {
            idempotency: with_key.then_some(&record),
            nonce: with_nonce.then_some(&nonce),
            ..append(&id, expected, &events)
        };
        let written = journal.append(request(0)).await.unwrap();
        assert_eq!(written.last_sequence, events.len() as u64, "shape {shape}");
        assert_eq!(written.cursors.len(), events.len(), "shape {shape}");
        assert!(
            written.cursors.windows(2).all(|w| w[0] < w[1]),
            "shape {shape}"
        );
        // Written again with a stale sequence (its record and nonce are new): nothing of it lands.
        let stale_record = NewIdempotencyRecord {
            key: format!("stale-key-{shape}"),
            ..record.clone()
        };
        let stale_nonce = NewNonce {
            nonce: format!("stale-nonce-{shape}"),
            ..nonce.clone()
        };
        let error = journal
            .append(AppendRequest {
                idempotency: with_key.then_some(&stale_record),
                nonce: with_nonce.then_some(&stale_nonce),
                ..append(&id, 0, &events)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(error, JournalError::Conflict { .. }),
            "shape {shape}: {error:?}"
        );

        let loaded = journal.load::<Run>(&id, 0).await.unwrap();
        let labels: Vec<_> = loaded.iter().map(|e| e.payload.clone()).collect();
        let expected: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(labels, expected, "shape {shape}");
        let stored = journal
            .find_idempotency("user:shape", &record.key)
            .await
            .unwrap();
        match (with_key, stored) {
            (true, Some(stored)) => {
                assert_eq!(stored.aggregate_id, id);
                assert_eq!(
                    (stored.first_sequence, stored.last_sequence),
                    (1, events.len() as u64)
                );
                assert_eq!(stored.request_hash, record.request_hash);
            }
            (false, None) => {}
            (with_key, stored) => panic!("shape {shape}: key {with_key}, stored {stored:?}"),
        }
        assert!(journal
            .find_idempotency("user:shape", &stale_record.key)
            .await
            .unwrap()
            .is_none());
        // A nonce the append recorded is spent; one it did not carry is still fresh.
        let spent = nonces.consume(&nonce.nonce, 4_000_000_000, 1_000).await;
        assert_eq!(
            matches!(spent, Err(engine::auth::AuthError::Replayed)),
            with_nonce,
            "shape {shape}: {spent:?}"
        );
        nonces
            .consume(&stale_nonce.nonce, 4_000_000_000, 1_000)
            .await
            .unwrap();
    }
}

/// Many appends at once (on SQLite they share group commits): the ones that fail their checks —
/// a stale sequence, a taken idempotency key, a taken nonce — fail alone and write nothing; every
/// other one is written exactly once.
async fn appends_committed_together_fail_alone(db: &TestDb) {
    let journal = db.database.journal();
    let taken = NewNonce {
        nonce: "nonce-taken".into(),
        expires_at_unix: 4_000_000_000,
    };
    let key = NewIdempotencyRecord {
        scope: "user:1".into(),
        key: "key-taken".into(),
        request_hash: "sha256:abc".into(),
        created_at: ts("2026-02-01T00:00:00Z"),
    };
    let event = [raw_event("x")];
    journal
        .append(AppendRequest {
            nonce: Some(&taken),
            idempotency: Some(&key),
            ..append("seed", 0, &event)
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..120 {
        let journal = journal.clone();
        let (taken, key) = (taken.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("g{i}");
            let event = [raw_event(&id)];
            let request = match i % 4 {
                // Everyone races for the same new aggregate: one wins.
                0 => append("contested", 0, &event),
                1 => AppendRequest {
                    nonce: Some(&taken),
                    ..append(&id, 0, &event)
                },
                2 => AppendRequest {
                    idempotency: Some(&key),
                    ..append(&id, 0, &event)
                },
                _ => append(&id, 0, &event),
            };
            (i % 4, journal.append(request).await)
        }));
    }
    let mut outcomes = HashMap::<(usize, &'static str), usize>::new();
    for task in tasks {
        let (kind, result) = task.await.unwrap();
        let label = match result {
            Ok(_) => "ok",
            Err(JournalError::Conflict { .. }) => "conflict",
            Err(JournalError::NonceTaken) => "nonce",
            Err(JournalError::IdempotencyKeyTaken) => "key",
            Err(other) => panic!("unexpected {other:?}"),
        };
        *outcomes.entry((kind, label)).or_default() += 1;
    }
    let expected: HashMap<(usize, &'static str), usize> = [
        ((0, "ok"), 1),
        ((0, "conflict"), 29),
        ((1, "nonce"), 30),
        ((2, "key"), 30),
        ((3, "ok"), 30),
    ]
    .into_iter()
    .collect();
    assert_eq!(outcomes, expected);
    let stored = read_all_settled(&journal).await;
    assert_eq!(
        stored.len(),
        1 + 1 + 30,
        "seed, contested, 30 plain appends"
    );
    let ids: HashSet<&str> = stored
        .iter()
        .map(|e| e.event.aggregate_id.as_str())
        .collect();
    assert_eq!(ids.len(), 32);
    assert_eq!(journal.load::<Run>("contested", 0).await.unwrap().len(), 1);
}

async fn read_all_returns_every_event_once_in_order_across_pages(db: &TestDb) {
    let journal = db.database.journal();
    let mut expected = Vec::new();
    for i in 0..25u64 {
        let id = format!("agg-{}", i % 4);
        let version = i / 4;
        let label = format!("e{i}");
        journal
            .append(append(&id, version, &[raw_event(&label)]))
            .await
            .unwrap();
        expected.push(label);
    }
    // Let the PostgreSQL horizon pass our commits first (other tests' transactions on the cluster
    // hold it back for a moment, see read_all_settled); then page through.
    read_all_settled(&journal).await;
    let mut cursor = GlobalCursor::START;
    let mut seen = Vec::new();
    loop {
        let page = journal.read_all(cursor, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        for event in &page {
            assert!(event.cursor > cursor, "cursors strictly increase");
            cursor = event.cursor;
            seen.push(event.event.payload["label"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        seen, expected,
        "sequential appends are read in append order"
    );
    assert!(journal.read_all(cursor, 100).await.unwrap().is_empty());
    let head = journal.head().await.unwrap();
    assert!(head.max_position >= 25);
    assert_eq!(
        journal
            .count_after(GlobalCursor::START, 1_000)
            .await
            .unwrap(),
        25
    );
    assert_eq!(
        journal.count_after(GlobalCursor::START, 10).await.unwrap(),
        10
    );
    assert_eq!(journal.count_after(cursor, 1_000).await.unwrap(), 0);
}

async fn events_survive_closing_and_reopening_the_database(db: &TestDb) {
    let journal = db.database.journal();
    journal
        .append(append("durable", 0, &[raw_event("kept")]))
        .await
        .unwrap();
    // A second, independent pool on the same database (a restarted process) sees the event.
    let config = match (&db.url, &db.data_dir) {
        (Some(url), _) => engine::DatabaseConfig::Postgres {
            url: url.clone(),
            max_connections: 2,
        },
        (None, Some(dir)) => engine::DatabaseConfig::Sqlite {
            path: dir.join(engine::db::SQLITE_FILE),
        },
        _ => unreachable!("a test database has a URL or a directory"),
    };
    db.database.close().await;
    let reopened = engine::Database::connect(&config).await.unwrap();
    reopened.migrate().await.unwrap();
    assert!(reopened.pending_migrations().await.unwrap().is_empty());
    let events = reopened.journal().load::<Run>("durable", 0).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload["label"], "kept");
    let all = read_all_settled(&reopened.journal()).await;
    assert_eq!(all.len(), 1);
    reopened.close().await;
}

/// Many tasks append to a few shared aggregates and to their own ones at once, retrying on
/// conflict like the engine does. Afterwards the global read must return every acknowledged
/// event exactly once, and each aggregate's events in sequence order.
async fn concurrent_appenders_lose_nothing_and_duplicate_nothing(db: &TestDb) {
    const TASKS: usize = 16;
    const PER_TASK: usize = 25;
    let journal = Arc::new(db.database.journal());
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let journal = journal.clone();
        handles.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..PER_TASK {
                let id = if i % 2 == 0 {
                    format!("shared-{}", i % 3)
                } else {
                    format!("own-{task}")
                };
                let label = format!("t{task}-{i}");
                loop {
                    let version = journal.load::<Run>(&id, 0).await.unwrap().len() as u64;
                    let events = [raw_event(&label)];
                    match journal.append(append(&id, version, &events)).await {
                        Ok(_) => break,
                        Err(JournalError::Conflict { .. }) => continue,
                        Err(other) => panic!("append failed: {other:?}"),
                    }
                }
                acknowledged.push(label);
            }
            acknowledged
        }));
    }
    let mut acknowledged = HashSet::new();
    for handle in handles {
        acknowledged.extend(handle.await.unwrap());
    }
    assert_eq!(acknowledged.len(), TASKS * PER_TASK);

    read_all_settled(&journal).await;
    let mut cursor = GlobalCursor::START;
    let mut seen = HashSet::new();
    let mut last_sequence: HashMap<String, usize> = HashMap::new();
    loop {
        let page = journal.read_all(cursor, 50).await.unwrap();
        if page.is_empty() {
            break;
        }
        for stored in page {
            assert!(stored.cursor > cursor);
            cursor = stored.cursor;
            let label = stored.event.payload["label"].as_str().unwrap().to_owned();
            assert!(seen.insert(label.clone()), "{label} read twice");
            let last = last_sequence
                .entry(stored.event.aggregate_id.clone())
                .or_insert(0);
            assert_eq!(
                stored.event.sequence,
                *last + 1,
                "{} read out of sequence order",
                stored.event.aggregate_id
            );
            *last = stored.event.sequence;
        }
    }
    assert_eq!(
        seen, acknowledged,
        "every acknowledged event read exactly once"
    );
}

/// A writer that has taken its place in the journal but not committed must hold the global
/// reader back; events committed after it must not be returned before it.
async fn an_open_write_transaction_is_never_skipped_by_the_global_reader(db: &TestDb) {
    let journal = db.database.journal();
    journal
        .append(append("before", 0, &[raw_event("before")]))
        .await
        .unwrap();
    // "before" is visible to the global read before the slow transaction starts.
    read_all_settled(&journal).await;
    match &db.database {
        engine::Database::Postgres(pool) => {
            // The slow transaction inserts first (lower xid and lower position) and stays open.
            let mut slow = pool.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('run', 'slow', 1, 'test.event', '1.0', '{\"label\":\"slow\"}', '{}')",
            )
            .execute(&mut *slow)
            .await
            .unwrap();
            // A fast writer commits after it.
            journal
                .append(append("fast", 0, &[raw_event("fast")]))
                .await
                .unwrap();
            let visible = labels(&journal, GlobalCursor::START).await;
            assert_eq!(
                visible,
                ["before"],
                "the fast event must wait until the slow transaction is resolved"
            );
            let cursor = last_cursor(&journal).await;
            slow.commit().await.unwrap();
            read_all_settled(&journal).await;
            assert_eq!(labels(&journal, cursor).await, ["slow", "fast"]);
        }
        engine::Database::Sqlite { pool, .. } => {
            // SQLite: the writer lock is taken up front, so a reader sees the journal as of the
            // last commit and a later writer cannot get a position until the open one commits.
            let mut slow = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('run', 'slow', 1, 'test.event', '1.0', '{\"label\":\"slow\"}', '{}')",
            )
            .execute(&mut *slow)
            .await
            .unwrap();
            assert_eq!(labels(&journal, GlobalCursor::START).await, ["before"]);
            let cursor = last_cursor(&journal).await;
            let writer = {
                let journal = journal.clone();
                tokio::spawn(async move {
                    journal
                        .append(append("fast", 0, &[raw_event("fast")]))
                        .await
                        .unwrap();
                })
            };
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(labels(&journal, cursor).await, Vec::<String>::new());
            slow.commit().await.unwrap();
            writer.await.unwrap();
            assert_eq!(labels(&journal, cursor).await, ["slow", "fast"]);
        }
    }
}

async fn labels(journal: &engine::AnyJournal, after: GlobalCursor) -> Vec<String> {
    journal
        .read_all(after, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.payload["label"].as_str().unwrap().to_owned())
        .collect()
}

async fn last_cursor(journal: &engine::AnyJournal) -> GlobalCursor {
    journal
        .read_all(GlobalCursor::START, 1000)
        .await
        .unwrap()
        .last()
        .map(|e| e.cursor)
        .unwrap_or_default()
}

/// The journal is postgres-es's table: a stock postgres-es `CqrsFramework` appends to it, and
/// those events get a global position and load through the runtime's journal.
#[tokio::test]
async fn postgres_es_writes_into_the_same_journal() {
    use aggregates::ids::{Owner, RunId, ThreadId, UserId};
    use aggregates::run::RunCommand;
    use aggregates::Stamped;

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let engine::Database::Postgres(pool) = &db.database else {
        unreachable!()
    };
    let cqrs = postgres_es::postgres_cqrs::<Run>(pool.clone(), vec![], ());
    cqrs.execute(
        "run_pges",
        Stamped::new(
            ts("2026-02-01T00:00:00Z"),
            RunCommand::CreateRun {
                run_id: RunId::parse("run_pges").unwrap(),
                thread_id: ThreadId::parse("thread_1").unwrap(),
                owner: Owner::User(UserId::parse("1").unwrap()),
                org_id: None,
                metadata: Default::default(),
            },
        ),
    )
    .await
    .unwrap();
    cqrs.execute(
        "run_pges",
        Stamped::new(
            ts("2026-02-01T00:00:01Z"),
            RunCommand::StartRun {
                source: "runtime".into(),
            },
        ),
    )
    .await
    .unwrap();
    let journal = db.database.journal();
    let all = read_all_settled(&journal).await;
    assert_eq!(
        all.iter()
            .map(|e| e.event.event_type.as_str())
            .collect::<Vec<_>>(),
        ["run.created", "run.started"]
    );
    assert!(all[0].cursor < all[1].cursor);
    assert_eq!(journal.load::<Run>("run_pges", 0).await.unwrap().len(), 2);
    db.cleanup().await;
}

//! Shared helpers: running one test body against both journal backends, and event builders.

use aggregates::Timestamp;
use engine::journal::{EventMetadata, NewEvent};
use serde_json::json;

/// Defines `postgres::<name>` and `sqlite::<name>` tests that run `<name>(&TestDb)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = engine::testing::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = engine::testing::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// A raw event with a recognisable payload.
pub fn raw_event(label: &str) -> NewEvent {
    let mut metadata = EventMetadata::new();
    metadata.insert("recorded_at".into(), "2026-02-01T00:00:00Z".into());
    NewEvent {
        event_type: "test.event".into(),
        event_version: "1.0".into(),
        payload: json!({ "label": label }),
        metadata,
    }
}

pub fn ts(text: &str) -> Timestamp {
    text.parse().expect("timestamp literal")
}

/// Every committed event, read through the gap-safe global read once it has caught up.
///
/// On PostgreSQL `read_all` holds back events until every transaction that started before them
/// has finished *anywhere in the cluster* (docs/adr/0002-global-order.md), and tests run in
/// parallel on one cluster, so a read right after a commit may legitimately return less. This
/// waits (bounded) until the global read returns as many events as the table holds.
pub async fn read_all_settled(journal: &engine::AnyJournal) -> Vec<engine::StoredEvent> {
    use engine::journal::{GlobalCursor, Journal};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut cursor = GlobalCursor::START;
        let mut all = Vec::new();
        loop {
            let page = journal.read_all(cursor, 500).await.unwrap();
            let Some(last) = page.last() else { break };
            cursor = last.cursor;
            all.extend(page);
        }
        let stored = journal
            .count_after(GlobalCursor::START, u64::MAX / 2)
            .await
            .unwrap();
        if all.len() as u64 == stored {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the global read did not catch up: {} of {stored} events",
            all.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

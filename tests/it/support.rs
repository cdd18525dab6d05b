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

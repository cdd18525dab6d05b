//! Unit-test helpers: hand-built journal events.

use aggregates::Timestamp;
use cqrs_es::persist::SerializedEvent;
use engine::journal::{GlobalCursor, StoredEvent};
use serde_json::{json, Value};

/// RFC 3339 of 2026-02-01T00:00:00Z plus `seconds`.
pub fn ts(seconds: i64) -> String {
    Timestamp::from_unix_seconds(1_769_904_000 + seconds)
        .expect("in range")
        .to_rfc3339()
}

/// A stored event recorded at [`ts`]`(recorded_s)`, at a position given by the call order.
pub fn stored(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    event_type: &str,
    payload: Value,
    recorded_s: i64,
) -> StoredEvent {
    use std::sync::atomic::{AtomicU64, Ordering};
    static POSITION: AtomicU64 = AtomicU64::new(1);
    StoredEvent {
        cursor: GlobalCursor::new(0, POSITION.fetch_add(1, Ordering::Relaxed)),
        event: SerializedEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: sequence as usize,
            event_type: event_type.to_owned(),
            event_version: "1.0".to_owned(),
            payload,
            metadata: json!({ "recorded_at": ts(recorded_s) }),
        },
    }
}

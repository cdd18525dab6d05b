//! Upcasting legacy (`0.x`) run events to the current `1.0` shape.
//!
//! The legacy shape (event_version `0.1`, from the runtime's pre-cqrs store, documented in
//! `docs/receipts-and-replay.md`) differs from 1.0 in three events:
//! - `run.started` had no `source`: it becomes `"runtime"`, the only source the old store used;
//! - `run.frame_appended` had neither `payload_hash` nor `occurred_at`: the hash is recomputed from
//!   `frame_type` + `payload` exactly as 1.0 computes it, `occurred_at` becomes `null`;
//! - `run.finished` had no `reason_class` and `error_code`: both become `null` (the effective
//!   reason class then defaults from the status, as for 1.0 events without one).
//!
//! Upcasting is a pure function of the stored event, so the journal (and its hash chain) keeps the
//! bytes as they were written; only the decoded event changes.

use cqrs_es::persist::SerializedEvent;
use serde_json::{Map, Value};

use super::{frame_payload_hash, RUN_EVENT_VERSION};

/// The legacy event version this upcaster understands.
pub const LEGACY_RUN_EVENT_VERSION: &str = "0.1";

/// Rewrites a legacy run event into the current shape; other events pass through unchanged.
pub fn upcast_run_event(mut event: SerializedEvent) -> SerializedEvent {
    if event.event_version != LEGACY_RUN_EVENT_VERSION {
        return event;
    }
    let Some(outer) = event.payload.as_object_mut() else {
        return event;
    };
    let upgraded = match event.event_type.as_str() {
        "run.started" => outer
            .get_mut("RunStarted")
            .and_then(Value::as_object_mut)
            .map(|body| {
                body.entry("source")
                    .or_insert_with(|| Value::String("runtime".into()));
            })
            .is_some(),
        "run.frame_appended" => outer
            .get_mut("FrameAppended")
            .and_then(Value::as_object_mut)
            .map(|body| {
                let frame_type = body
                    .get("frame_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let payload = body
                    .get("payload")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_else(Map::new);
                body.entry("payload_hash")
                    .or_insert_with(|| Value::String(frame_payload_hash(&frame_type, &payload)));
                body.entry("occurred_at").or_insert(Value::Null);
            })
            .is_some(),
        "run.finished" => outer
            .get_mut("RunFinished")
            .and_then(Value::as_object_mut)
            .map(|body| {
                body.entry("reason_class").or_insert(Value::Null);
                body.entry("error_code").or_insert(Value::Null);
                body.entry("reason").or_insert(Value::Null);
            })
            .is_some(),
        _ => true,
    };
    if upgraded {
        event.event_version = RUN_EVENT_VERSION.to_owned();
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunEvent;
    use serde_json::json;

    fn legacy(event_type: &str, payload: Value) -> SerializedEvent {
        SerializedEvent {
            aggregate_id: "run_1".into(),
            sequence: 2,
            aggregate_type: "run".into(),
            event_type: event_type.into(),
            event_version: LEGACY_RUN_EVENT_VERSION.into(),
            payload,
            metadata: json!({}),
        }
    }

    fn decode(event: SerializedEvent) -> RunEvent {
        serde_json::from_value(upcast_run_event(event).payload).unwrap()
    }

    #[test]
    fn a_legacy_frame_gets_its_payload_hash_recomputed() {
        let event = legacy(
            "run.frame_appended",
            json!({"FrameAppended": {"frame_id": "f1", "frame_type": "user_message",
                   "payload": {"text": "hi"}, "appended_at": "2026-02-01T00:00:01Z"}}),
        );
        let upcast = upcast_run_event(event.clone());
        assert_eq!(upcast.event_version, "1.0");
        match decode(event) {
            RunEvent::FrameAppended {
                payload,
                payload_hash,
                occurred_at,
                ..
            } => {
                assert_eq!(payload_hash, frame_payload_hash("user_message", &payload));
                assert_eq!(occurred_at, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn legacy_start_and_finish_get_their_new_fields() {
        let started = legacy(
            "run.started",
            json!({"RunStarted": {"started_at": "2026-02-01T00:00:01Z"}}),
        );
        assert!(
            matches!(decode(started), RunEvent::RunStarted { source, .. } if source == "runtime")
        );
        let finished = legacy(
            "run.finished",
            json!({"RunFinished": {"status": "failed", "finished_at": "2026-02-01T00:00:02Z"}}),
        );
        let event = decode(finished);
        assert_eq!(event.reason_class().as_deref(), Some("execution_failed"));
    }

    #[test]
    fn current_events_pass_through_untouched() {
        let mut event = legacy("run.started", json!({"RunStarted": {}}));
        event.event_version = "1.0".into();
        assert_eq!(upcast_run_event(event.clone()), event);
    }
}

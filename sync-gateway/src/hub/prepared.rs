//! A stream row serialized once: the JSON of its `sync:update_batch` update object (members as
//! declared in `projectors::store::update_object`), shared by every session that delivers it.

use std::sync::Arc;
use std::time::Instant;

use crate::source::{DocOwner, StreamRow};

/// One update, ready to splice into a batch frame.
#[derive(Debug)]
pub struct PreparedRow {
    pub watermark: u64,
    pub owner: DocOwner,
    /// `{"topic":…,"doc_key":…,"doc_version":…,"payload":…,"payload_hash":…,"watermark":…,"hydration_required":…}`
    pub json: Box<str>,
    /// Whether the payload was replaced by a pointer (too large).
    pub pointer: bool,
    /// When the tailer read the row (live rows only; replayed rows have none): the start of
    /// the sessions' stage timings (`runtime_sync_tail_to_*`).
    pub read_at: Option<Instant>,
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

impl PreparedRow {
    /// Serializes `row`; payloads larger than `max_update_bytes` become `null` with
    /// `hydration_required: true`.
    pub fn prepare(row: &StreamRow, max_update_bytes: usize) -> Arc<PreparedRow> {
        Self::prepare_read(row, max_update_bytes, None)
    }

    /// [`PreparedRow::prepare`] for a row the tailer read at `read_at`.
    pub fn prepare_read(
        row: &StreamRow,
        max_update_bytes: usize,
        read_at: Option<Instant>,
    ) -> Arc<PreparedRow> {
        use projectors::store::update_object as wire;
        let pointer = row.payload.len() > max_update_bytes;
        let payload: &str = if pointer {
            wire::POINTER_PAYLOAD
        } else {
            &row.payload
        };
        let mut json =
            String::with_capacity(payload.len() + row.doc_key.len() + row.topic.len() + 160);
        json.push_str(wire::TOPIC);
        json.push_str(&quoted(&row.topic));
        json.push_str(wire::DOC_KEY);
        json.push_str(&quoted(&row.doc_key));
        json.push_str(wire::DOC_VERSION);
        json.push_str(&row.doc_version.to_string());
        json.push_str(wire::PAYLOAD);
        json.push_str(payload);
        json.push_str(wire::PAYLOAD_HASH);
        json.push_str(&quoted(&row.payload_hash));
        json.push_str(wire::WATERMARK);
        json.push_str(&row.watermark.to_string());
        json.push_str(wire::HYDRATION_REQUIRED);
        json.push_str(if pointer { "true" } else { "false" });
        json.push_str(wire::END);
        Arc::new(PreparedRow {
            watermark: row.watermark,
            owner: row.owner.clone(),
            json: json.into_boxed_str(),
            pointer,
            read_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Update;
    use serde_json::json;

    fn row(payload: serde_json::Value) -> StreamRow {
        StreamRow {
            topic: "runtime.run_summaries".into(),
            watermark: 7,
            doc_key: "runtime/run_summary:run_1".into(),
            doc_version: 3,
            payload_hash: aggregates::canonical::hash_canonical(&payload),
            payload: payload.to_string(),
            owner: DocOwner::user("u1"),
        }
    }

    #[test]
    fn serializes_the_update_object_in_wire_order() {
        let prepared = PreparedRow::prepare(&row(json!({"status": "running", "n": 1})), 1024);
        let hash = aggregates::canonical::hash_canonical(&json!({"n": 1, "status": "running"}));
        assert_eq!(
            &*prepared.json,
            format!(
                r#"{{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:run_1","doc_version":3,"payload":{{"status":"running","n":1}},"payload_hash":"{hash}","watermark":7,"hydration_required":false}}"#
            )
        );
        let update: Update = serde_json::from_str(&prepared.json).unwrap();
        assert_eq!(update.payload, Some(json!({"status": "running", "n": 1})));
    }

    #[test]
    fn oversized_payloads_become_pointers_that_keep_the_hash() {
        let big = json!({"blob": "x".repeat(2000)});
        let prepared = PreparedRow::prepare(&row(big.clone()), 1024);
        assert!(prepared.pointer);
        let update: Update = serde_json::from_str(&prepared.json).unwrap();
        assert_eq!(update.payload, None);
        assert!(update.hydration_required);
        assert_eq!(
            update.payload_hash,
            aggregates::canonical::hash_canonical(&big)
        );
    }
}

//! The pieces of one stream event that several artifacts write, rendered once per event: the
//! payload's canonical JSON (the trajectory hash and the replay's `payload_hash` both hash it) and
//! `recorded_at` in the contract's rendering (the trajectory and REPLAY.jsonl both write it).

use std::io::{self, Write};

use aggregates::canonical::{map_in_canonical_order, write_canonical_map};

use super::record::RunStreamEvent;

/// A stream event with its rendered pieces.
pub struct RenderedEvent<'a> {
    pub event: &'a RunStreamEvent,
    /// The payload's canonical JSON.
    pub canonical_payload: &'a [u8],
    /// `recorded_at` as [`aggregates::Timestamp::to_contract_rfc3339`] renders it.
    pub recorded_at: String,
    /// Whether the payload's members are already in canonical order at every depth, so that its
    /// compact JSON in its own member order (REPLAY.jsonl's) is `canonical_payload`.
    payload_in_canonical_order: bool,
}

impl<'a> RenderedEvent<'a> {
    /// Renders `event`, its canonical payload into `buffer` (cleared first).
    pub fn render(event: &'a RunStreamEvent, buffer: &'a mut Vec<u8>) -> Self {
        buffer.clear();
        let in_order = map_in_canonical_order(&event.payload);
        if in_order {
            // Its compact JSON is its canonical JSON; serde_json writes it without sorting.
            serde_json::to_writer(&mut *buffer, &event.payload)
                .expect("writing to a Vec cannot fail");
        } else {
            write_canonical_map(&event.payload, &mut *buffer)
                .expect("writing to a Vec cannot fail");
        }
        Self {
            event,
            canonical_payload: buffer,
            recorded_at: event.recorded_at.to_contract_rfc3339(),
            payload_in_canonical_order: in_order,
        }
    }

    /// Writes the payload in its own member order (not sorted), as REPLAY.jsonl carries it.
    ///
    /// # Errors
    /// Whatever `out` returns.
    pub fn write_payload_in_own_order<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        if self.payload_in_canonical_order {
            out.write_all(self.canonical_payload)
        } else {
            serde_json::to_writer(out, &self.event.payload).map_err(io::Error::other)
        }
    }
}

#[cfg(test)]
mod tests {
    use aggregates::canonical::canonical_json;
    use aggregates::Timestamp;
    use serde_json::{json, Value};

    use super::*;

    fn event(payload: Value) -> RunStreamEvent {
        RunStreamEvent {
            seq: 1,
            event_type: "text_delta".into(),
            payload: payload.as_object().expect("an object").clone(),
            idempotency_key: None,
            recorded_at: "2026-02-01T00:00:01.5Z".parse::<Timestamp>().unwrap(),
        }
    }

    #[test]
    fn both_renderings_match_what_each_artifact_wrote_on_its_own() {
        for payload in [
            json!({"delta": "hello \"world\"\n", "index": 3}),
            json!({"z": 1, "a": {"y": [1, {"b": 2, "a": 1}]}}),
            json!({}),
        ] {
            let event = event(payload.clone());
            let mut buffer = vec![b'x'; 3];
            let rendered = RenderedEvent::render(&event, &mut buffer);
            assert_eq!(
                rendered.canonical_payload,
                canonical_json(&payload).as_bytes()
            );
            let mut own_order = Vec::new();
            rendered.write_payload_in_own_order(&mut own_order).unwrap();
            assert_eq!(own_order, serde_json::to_vec(&event.payload).unwrap());
            assert_eq!(
                rendered.recorded_at,
                event.recorded_at.to_contract_rfc3339()
            );
        }
    }
}

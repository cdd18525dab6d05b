//! `trajectory_hash`: `sha256:` + hex SHA-256 of the canonical JSON array of
//! `{seq, event_type, payload, idempotency_key (null when absent), recorded_at}` for every event
//! of the run's stream, `recorded_at` rendered `YYYY-MM-DDTHH:MM:SS+00:00` (sub-seconds, when
//! present, as [`aggregates::Timestamp::to_contract_rfc3339`] renders them).

use std::io::Write;

use aggregates::canonical::{write_json_string, PrefixedSha256};

use super::record::RunStreamEvent;
use super::rendered::RenderedEvent;

/// Hashes the trajectory while events stream past; constant memory.
#[derive(Clone, Default)]
pub struct TrajectoryHasher {
    hasher: PrefixedSha256,
    count: u64,
}

impl TrajectoryHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next event (events must come in seq order).
    pub fn push(&mut self, event: &RunStreamEvent) {
        let mut canonical = Vec::with_capacity(128);
        self.push_rendered(&RenderedEvent::render(event, &mut canonical));
    }

    /// Adds the next event, already rendered.
    pub fn push_rendered(&mut self, rendered: &RenderedEvent<'_>) {
        let event = rendered.event;
        let out = &mut self.hasher;
        let sep: &[u8] = if self.count == 0 { b"[" } else { b"," };
        let write = |out: &mut PrefixedSha256| -> std::io::Result<()> {
            // Keys in sorted order: event_type, idempotency_key, payload, recorded_at, seq.
            out.write_all(sep)?;
            out.write_all(b"{\"event_type\":")?;
            write_json_string(&event.event_type, out)?;
            out.write_all(b",\"idempotency_key\":")?;
            match &event.idempotency_key {
                Some(key) => write_json_string(key, out)?,
                None => out.write_all(b"null")?,
            }
            out.write_all(b",\"payload\":")?;
            out.write_all(rendered.canonical_payload)?;
            out.write_all(b",\"recorded_at\":")?;
            write_json_string(&rendered.recorded_at, out)?;
            write!(out, ",\"seq\":{}}}", event.seq)
        };
        write(out).expect("hashing cannot fail");
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash of everything pushed (`[]` when nothing was).
    pub fn finish(mut self) -> String {
        if self.count == 0 {
            self.hasher.update(b"[");
        }
        self.hasher.update(b"]");
        self.hasher.finish()
    }
}

/// The trajectory hash of a whole stream.
pub fn trajectory_hash<'a>(events: impl IntoIterator<Item = &'a RunStreamEvent>) -> String {
    let mut hasher = TrajectoryHasher::new();
    for event in events {
        hasher.push(event);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aggregates::canonical::hash_canonical;
    use serde_json::{json, Value};

    #[test]
    fn streaming_equals_hashing_the_canonical_array() {
        let events = vec![
            RunStreamEvent {
                seq: 1,
                event_type: "run.started".into(),
                payload: json!({"source": "runtime"}).as_object().cloned().unwrap(),
                idempotency_key: None,
                recorded_at: "2026-02-01T00:00:01Z".parse().unwrap(),
            },
            RunStreamEvent {
                seq: 2,
                event_type: "text_delta".into(),
                payload: json!({"z": 1, "delta": "hé\n"})
                    .as_object()
                    .cloned()
                    .unwrap(),
                idempotency_key: Some("f1".into()),
                recorded_at: "2026-02-01T00:00:01.250Z".parse().unwrap(),
            },
        ];
        let array: Vec<Value> = events
            .iter()
            .map(|e| {
                json!({"seq": e.seq, "event_type": e.event_type, "payload": e.payload,
                       "idempotency_key": e.idempotency_key,
                       "recorded_at": e.recorded_at.to_contract_rfc3339()})
            })
            .collect();
        assert_eq!(
            trajectory_hash(&events),
            hash_canonical(&Value::Array(array))
        );
        assert_eq!(trajectory_hash([]), hash_canonical(&json!([])));
    }
}

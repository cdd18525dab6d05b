//! The per-aggregate event hash chain (`openagents.event_chain.v1`), portable so that anyone with
//! SHA-256 and canonical JSON can recompute it (spec: `docs/receipts-and-replay.md`).
//!
//! ```text
//! content_hash(e) = sha256:hex( canonical_json({aggregate_id, aggregate_type, event_type,
//!                                               event_version, metadata*, payload, sequence}) )
//! chain_hash(e)   = sha256:hex( canonical_json({content_hash: content_hash(e),
//!                                               prev_chain_hash: chain_hash(previous) | null}) )
//! ```
//! `metadata*` is the stored metadata object without the `content_hash` and `chain_hash` keys (the
//! engine stores both hashes there). The first event of an aggregate (sequence 1) has
//! `prev_chain_hash: null`.

use std::io::{self, Write};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::canonical::{prefixed_hex, write_canonical, write_json_string, SHA256_PREFIX};

/// Name and version of the chain construction.
pub const CHAIN_SCHEME: &str = "openagents.event_chain.v1";
/// Metadata key holding an event's content hash.
pub const CONTENT_HASH_KEY: &str = "content_hash";
/// Metadata key holding an event's chain hash.
pub const CHAIN_HASH_KEY: &str = "chain_hash";

/// True for the metadata keys the chain itself writes (excluded from the content hash).
pub fn is_chain_key(key: &str) -> bool {
    key == CONTENT_HASH_KEY || key == CHAIN_HASH_KEY
}

/// The stored fields of one event that its content hash covers.
#[derive(Clone, Copy, Debug)]
pub struct EventContent<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Value,
    /// The stored metadata object; `content_hash`/`chain_hash` keys in it are ignored. A
    /// non-object value is hashed as it is.
    pub metadata: &'a Value,
}

impl EventContent<'_> {
    /// Streams the canonical JSON of this event's content into `out`.
    ///
    /// # Errors
    /// Whatever `out` returns.
    pub fn write_canonical<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        // Keys in sorted order: aggregate_id, aggregate_type, event_type, event_version,
        // metadata, payload, sequence.
        out.write_all(b"{\"aggregate_id\":")?;
        write_json_string(self.aggregate_id, out)?;
        out.write_all(b",\"aggregate_type\":")?;
        write_json_string(self.aggregate_type, out)?;
        out.write_all(b",\"event_type\":")?;
        write_json_string(self.event_type, out)?;
        out.write_all(b",\"event_version\":")?;
        write_json_string(self.event_version, out)?;
        out.write_all(b",\"metadata\":")?;
        match self.metadata {
            Value::Object(map) if map.keys().any(|k| is_chain_key(k)) => {
                let filtered: Map<String, Value> = map
                    .iter()
                    .filter(|(k, _)| !is_chain_key(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                write_canonical(&Value::Object(filtered), out)?;
            }
            other => write_canonical(other, out)?,
        }
        out.write_all(b",\"payload\":")?;
        write_canonical(self.payload, out)?;
        write!(out, ",\"sequence\":{}}}", self.sequence)
    }

    /// The canonical JSON text of this event's content.
    pub fn canonical_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_canonical(&mut out)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("canonical JSON is UTF-8")
    }

    /// `sha256:` hash of [`EventContent::canonical_json`].
    pub fn content_hash(&self) -> String {
        let mut hasher = Sha256::new();
        self.write_canonical(&mut hasher)
            .expect("hashing cannot fail");
        prefixed_hex(SHA256_PREFIX, &hasher.finalize())
    }
}

/// The chain hash of an event with content hash `content_hash` following `prev_chain_hash`
/// (`None` for an aggregate's first event).
pub fn chain_hash(prev_chain_hash: Option<&str>, content_hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"{\"content_hash\":");
    write_json_string(content_hash, &mut hasher).expect("hashing cannot fail");
    hasher.update(b",\"prev_chain_hash\":");
    match prev_chain_hash {
        Some(prev) => write_json_string(prev, &mut hasher).expect("hashing cannot fail"),
        None => hasher.update(b"null"),
    }
    hasher.update(b"}");
    prefixed_hex(SHA256_PREFIX, &hasher.finalize())
}

/// Both hashes of one event: `(content_hash, chain_hash)`.
pub fn link(prev_chain_hash: Option<&str>, content: &EventContent<'_>) -> (String, String) {
    let content_hash = content.content_hash();
    let chain = chain_hash(prev_chain_hash, &content_hash);
    (content_hash, chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{canonical_json, hash_canonical};
    use serde_json::json;

    fn content<'a>(payload: &'a Value, metadata: &'a Value) -> EventContent<'a> {
        EventContent {
            aggregate_type: "run",
            aggregate_id: "run_1",
            sequence: 2,
            event_type: "run.started",
            event_version: "1.0",
            payload,
            metadata,
        }
    }

    #[test]
    fn the_content_hash_is_the_hash_of_a_plain_canonical_object() {
        let payload =
            json!({"RunStarted": {"source": "runtime", "started_at": "2026-02-01T00:00:01Z"}});
        let metadata = json!({"recorded_at": "2026-02-01T00:00:01Z", "actor": "user:1"});
        let event = content(&payload, &metadata);
        let by_hand = json!({
            "aggregate_type": "run", "aggregate_id": "run_1", "sequence": 2,
            "event_type": "run.started", "event_version": "1.0",
            "payload": payload, "metadata": metadata,
        });
        assert_eq!(event.canonical_json(), canonical_json(&by_hand));
        assert_eq!(event.content_hash(), hash_canonical(&by_hand));
    }

    #[test]
    fn chain_keys_in_metadata_are_not_part_of_the_content() {
        let payload = json!({"a": 1});
        let plain = json!({"recorded_at": "t"});
        let with_hashes = json!({"recorded_at": "t", "content_hash": "x", "chain_hash": "y"});
        assert_eq!(
            content(&payload, &plain).content_hash(),
            content(&payload, &with_hashes).content_hash()
        );
    }

    #[test]
    fn the_chain_hash_is_the_hash_of_a_canonical_link_object() {
        let c = "sha256:00";
        assert_eq!(
            chain_hash(None, c),
            hash_canonical(&json!({"content_hash": c, "prev_chain_hash": null}))
        );
        assert_eq!(
            chain_hash(Some("sha256:ff"), c),
            hash_canonical(&json!({"content_hash": c, "prev_chain_hash": "sha256:ff"}))
        );
    }

    #[test]
    fn any_change_to_content_or_predecessor_changes_the_link() {
        let payload = json!({"a": 1});
        let metadata = json!({});
        let base = link(None, &content(&payload, &metadata));
        let other_payload = json!({"a": 2});
        assert_ne!(base, link(None, &content(&other_payload, &metadata)));
        let mut moved = content(&payload, &metadata);
        moved.sequence = 3;
        assert_ne!(base.0, moved.content_hash());
        assert_ne!(
            base.1,
            link(Some("sha256:aa"), &content(&payload, &metadata)).1
        );
    }
}

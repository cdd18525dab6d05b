//! Stored events read back: decoding (upcast, then deserialise at the expected sequence) and
//! the chain content and hash of a stored row.

use aggregates::chain::{self, EventContent};
use aggregates::RuntimeAggregate;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::EventEnvelope;

/// The chain hash of a stored event: the one in its metadata, or (for rows written before the
/// chain existed, or by another writer such as the stock postgres-es repository) the one computed
/// from its content and `prev_chain_hash`.
pub fn stored_chain_hash(event: &SerializedEvent, prev_chain_hash: Option<&str>) -> String {
    if let Some(stored) = event
        .metadata
        .get(chain::CHAIN_HASH_KEY)
        .and_then(|v| v.as_str())
    {
        return stored.to_owned();
    }
    chain::link(prev_chain_hash, &stored_content(event)).1
}

/// The chain content of a stored event.
pub fn stored_content(event: &SerializedEvent) -> EventContent<'_> {
    EventContent {
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence as u64,
        event_type: &event.event_type,
        event_version: &event.event_version,
        payload: &event.payload,
        metadata: &event.metadata,
    }
}

/// Upcasts and deserialises one stored event, checking it sits at `expected_sequence`.
pub fn decode<A: RuntimeAggregate>(
    serialized: SerializedEvent,
    expected_sequence: u64,
) -> anyhow::Result<EventEnvelope<A>> {
    if serialized.sequence as u64 != expected_sequence {
        anyhow::bail!(
            "{}/{} has sequence {} where {} was expected",
            serialized.aggregate_type,
            serialized.aggregate_id,
            serialized.sequence,
            expected_sequence
        );
    }
    let upcast = A::upcast(serialized);
    let context = format!(
        "decode {} v{} at {}/{}#{}",
        upcast.event_type,
        upcast.event_version,
        upcast.aggregate_type,
        upcast.aggregate_id,
        upcast.sequence
    );
    EventEnvelope::<A>::try_from(upcast).map_err(|e| anyhow::anyhow!("{context}: {e}"))
}

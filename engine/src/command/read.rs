//! Reads of one aggregate through the engine: its summary (read through to the journal, or
//! from the cache when settled) and its decoded events.

use aggregates::RuntimeAggregate;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::EventEnvelope;

use super::{decode, stored_chain_hash, CommandError, Engine};
use crate::cache::Loaded;
use crate::journal::Journal;

impl Engine {
    /// Folds the journal's newer events into the slot (or loads from scratch if it is empty).
    pub(super) async fn catch_up<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        slot: &mut Option<Loaded<A>>,
    ) -> Result<(), CommandError<A::Error>> {
        let Loaded {
            mut aggregate,
            version,
            mut chain_head,
        } = slot.take().unwrap_or(Loaded {
            aggregate: A::default(),
            version: 0,
            chain_head: None,
        });
        let stored = self
            .journal
            .load::<A>(aggregate_id, version)
            .await
            .map_err(CommandError::from_journal)?;
        let mut version = version;
        for serialized in stored {
            chain_head = Some(stored_chain_hash(&serialized, chain_head.as_deref()));
            let envelope = decode::<A>(serialized, version + 1).map_err(CommandError::Internal)?;
            aggregate.apply(envelope.payload);
            version += 1;
        }
        *slot = Some(Loaded {
            aggregate,
            version,
            chain_head,
        });
        Ok(())
    }

    /// The aggregate's current summary and version, read through to the journal (so it reflects
    /// appends by other processes).
    ///
    /// # Errors
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`].
    pub async fn load<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<(A::Summary, u64), CommandError<A::Error>> {
        let slot = self.cache.slot::<A>(A::TYPE, aggregate_id);
        let mut guard = slot.lock().await;
        self.catch_up::<A>(aggregate_id, &mut guard).await?;
        let loaded = guard.as_ref().expect("loaded by catch_up");
        let loaded_bytes = loaded.aggregate.approx_bytes();
        let answer = (loaded.aggregate.summary(), loaded.version);
        drop(guard);
        self.cache.weigh(A::TYPE, aggregate_id, loaded_bytes);
        Ok(answer)
    }

    /// The aggregate's summary as this process's cache holds it, without reading the journal,
    /// when it is cached and `settled` accepts it; otherwise as [`Engine::load`]. A cached
    /// summary may lag other processes' appends: `settled` must accept only summaries whose facts
    /// the caller reads can no longer change (e.g. an existing run's owner, thread and tenant).
    ///
    /// # Errors
    /// As [`Engine::load`].
    pub async fn load_settled<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        settled: impl FnOnce(&A::Summary) -> bool,
    ) -> Result<A::Summary, CommandError<A::Error>> {
        let cached = {
            let slot = self.cache.slot::<A>(A::TYPE, aggregate_id);
            let guard = slot.lock().await;
            guard.as_ref().map(|loaded| loaded.aggregate.summary())
        };
        match cached {
            Some(summary) if settled(&summary) => Ok(summary),
            _ => Ok(self.load::<A>(aggregate_id).await?.0),
        }
    }

    /// The aggregate's events with journal sequence greater than `after_sequence`, decoded.
    ///
    /// # Errors
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`].
    pub async fn events_after<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
        let stored = self
            .journal
            .load::<A>(aggregate_id, after_sequence)
            .await
            .map_err(CommandError::from_journal)?;
        decode_after::<A>(after_sequence, stored.into_iter())
    }

    /// At most `limit` of one aggregate's events with `sequence > after_sequence`, decoded, in
    /// sequence order: what a reader that streams an aggregate (SSE) reads per step, so a long
    /// history is never held in memory at once.
    ///
    /// # Errors
    /// As [`Self::events_after`].
    pub async fn events_page<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
        let stored = self
            .journal
            .load_stored(A::TYPE, aggregate_id, after_sequence, limit)
            .await
            .map_err(CommandError::from_journal)?;
        decode_after::<A>(after_sequence, stored.into_iter().map(|s| s.event))
    }
}

/// Decodes one aggregate's events that follow `after_sequence`, checking that their sequences
/// continue it without a gap.
fn decode_after<A: RuntimeAggregate>(
    after_sequence: u64,
    stored: impl ExactSizeIterator<Item = SerializedEvent>,
) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
    let mut events = Vec::with_capacity(stored.len());
    for (expected, serialized) in (after_sequence + 1..).zip(stored) {
        events.push(decode::<A>(serialized, expected).map_err(CommandError::Internal)?);
    }
    Ok(events)
}

//! The aggregate cache: recently used aggregates kept in memory with the journal version they
//! reflect, each behind its own async mutex so this process runs one command per aggregate at a
//! time. It is only an optimisation: the journal's optimistic check catches a stale entry (another
//! process appended), and the engine then reloads.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// An aggregate folded up to `version` (its last journal sequence; 0 = no events).
pub(crate) struct Loaded<A> {
    pub aggregate: A,
    pub version: u64,
    /// The chain hash of the event at `version` (`None` before the first event): the link the
    /// next appended event extends (`aggregates::chain`).
    pub chain_head: Option<String>,
}

/// One aggregate's slot. `None` means "not loaded" (or dropped after a failure).
pub(crate) type Slot<A> = Arc<tokio::sync::Mutex<Option<Loaded<A>>>>;

type Key = (&'static str, String);

/// A slot and the bytes its aggregate was last weighed at.
struct Entry {
    slot: Arc<dyn Any + Send + Sync>,
    bytes: usize,
}

/// The least recently used entries, bounded by count and by the bytes their aggregates weigh.
struct Slots {
    entries: LruCache<Key, Entry>,
    bytes: usize,
    max_bytes: usize,
}

impl Slots {
    /// Drops least recently used entries until the total weight fits (the newest always stays).
    fn shrink(&mut self) {
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes = self.bytes.saturating_sub(evicted.bytes),
                None => break,
            }
        }
    }
}

/// What an empty slot is weighed at until its aggregate is.
const EMPTY_SLOT_BYTES: usize = 256;

pub(crate) struct AggregateCache {
    /// std Mutex: held only for a map lookup or insert, never across an await.
    slots: Mutex<Slots>,
}

impl AggregateCache {
    /// A cache of at most `capacity` aggregates weighing at most `max_bytes` together
    /// (`RuntimeAggregate::approx_bytes`).
    pub fn new(capacity: NonZeroUsize, max_bytes: usize) -> Self {
        Self {
            slots: Mutex::new(Slots {
                entries: LruCache::new(capacity),
                bytes: 0,
                max_bytes,
            }),
        }
    }

    /// The slot for `(aggregate_type, id)`, created empty if absent. If the entry is evicted
    /// while a command holds it, a later command may get a fresh slot; the journal's optimistic
    /// check keeps the two from both appending at the same sequence.
    pub fn slot<A: Send + 'static>(&self, aggregate_type: &'static str, id: &str) -> Slot<A> {
        let key = (aggregate_type, id.to_owned());
        let mut slots = self.slots.lock().expect("cache lock poisoned");
        if let Some(existing) = slots.entries.get(&key) {
            if let Ok(slot) = existing
                .slot
                .clone()
                .downcast::<tokio::sync::Mutex<Option<Loaded<A>>>>()
            {
                return slot;
            }
        }
        let slot: Slot<A> = Arc::new(tokio::sync::Mutex::new(None));
        let entry = Entry {
            slot: slot.clone(),
            bytes: EMPTY_SLOT_BYTES,
        };
        if let Some((_, replaced)) = slots.entries.push(key, entry) {
            slots.bytes = slots.bytes.saturating_sub(replaced.bytes);
        }
        slots.bytes += EMPTY_SLOT_BYTES;
        slots.shrink();
        slot
    }

    /// Records what `(aggregate_type, id)` weighs now (after a load or a command), evicting the
    /// least recently used entries beyond the byte budget.
    pub fn weigh(&self, aggregate_type: &'static str, id: &str, bytes: usize) {
        let key = (aggregate_type, id.to_owned());
        let mut slots = self.slots.lock().expect("cache lock poisoned");
        let Some(entry) = slots.entries.peek_mut(&key) else {
            return;
        };
        let before = std::mem::replace(&mut entry.bytes, bytes);
        slots.bytes = slots.bytes.saturating_sub(before) + bytes;
        slots.shrink();
        metrics::gauge!("runtime_aggregate_cache_bytes").set(slots.bytes as f64);
    }

    /// The total weight of the cached aggregates.
    pub fn bytes(&self) -> usize {
        self.slots.lock().expect("cache lock poisoned").bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .expect("cache lock poisoned")
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_key_gets_the_same_slot_until_evicted() {
        let cache = AggregateCache::new(NonZeroUsize::new(2).unwrap(), usize::MAX);
        let a1 = cache.slot::<u32>("t", "a");
        *a1.lock().await = Some(Loaded {
            aggregate: 5,
            version: 1,
            chain_head: None,
        });
        let a2 = cache.slot::<u32>("t", "a");
        assert!(Arc::ptr_eq(&a1, &a2));
        cache.slot::<u32>("t", "b");
        cache.slot::<u32>("t", "c");
        assert_eq!(cache.len(), 2);
        let a3 = cache.slot::<u32>("t", "a");
        assert!(!Arc::ptr_eq(&a1, &a3));
        assert!(a3.lock().await.is_none());
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget_evicting_the_least_recently_used() {
        let cache = AggregateCache::new(NonZeroUsize::new(100).unwrap(), 10_000);
        for i in 0..10 {
            let id = format!("a{i}");
            cache.slot::<u32>("t", &id);
            cache.weigh("t", &id, 3_000);
            assert!(cache.bytes() <= 10_000, "{} bytes after {i}", cache.bytes());
        }
        assert_eq!(cache.len(), 3, "three 3 kB aggregates fit in 10 kB");
        // The newest survive; the oldest went first.
        let newest = cache.slot::<u32>("t", "a9");
        assert!(Arc::strong_count(&newest) >= 2, "a9 is still cached");
        // One aggregate heavier than the whole budget still stays while it is the only one.
        cache.slot::<u32>("t", "huge");
        cache.weigh("t", "huge", 50_000);
        assert_eq!(cache.len(), 1);
    }
}

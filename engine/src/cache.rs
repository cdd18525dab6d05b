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

pub(crate) struct AggregateCache {
    /// std Mutex: held only for a map lookup or insert, never across an await.
    slots: Mutex<LruCache<Key, Arc<dyn Any + Send + Sync>>>,
}

impl AggregateCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            slots: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The slot for `(aggregate_type, id)`, created empty if absent. If the entry is evicted
    /// while a command holds it, a later command may get a fresh slot; the journal's optimistic
    /// check keeps the two from both appending at the same sequence.
    pub fn slot<A: Send + 'static>(&self, aggregate_type: &'static str, id: &str) -> Slot<A> {
        let key = (aggregate_type, id.to_owned());
        let mut slots = self.slots.lock().expect("cache lock poisoned");
        if let Some(existing) = slots.get(&key) {
            if let Ok(slot) = existing
                .clone()
                .downcast::<tokio::sync::Mutex<Option<Loaded<A>>>>()
            {
                return slot;
            }
        }
        let slot: Slot<A> = Arc::new(tokio::sync::Mutex::new(None));
        slots.put(key, slot.clone());
        slot
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.lock().expect("cache lock poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_key_gets_the_same_slot_until_evicted() {
        let cache = AggregateCache::new(NonZeroUsize::new(2).unwrap());
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
}

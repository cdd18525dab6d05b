//! An in-memory [`SyncSource`] with the contract's semantics (gapless per-topic watermarks,
//! retention floor, epochs, owner filtering), for tests and the fan-out bench. Writers call
//! [`MemorySource::append`] the way a projector commit would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

use projectors::store::epoch_marker_key;

use super::{
    Doc, DocOwner, HydratePage, Hydration, OwnerFilter, SourceError, StreamRow, SyncSource,
    TopicState,
};

struct Topic {
    head: u64,
    retention_floor: u64,
    epoch: u64,
    epoch_start: u64,
    /// Contiguous rows `(first_watermark - 1, head]` not yet pruned.
    rows: VecDeque<StreamRow>,
    /// Current docs by key (BTreeMap: hydration returns them in key order).
    docs: BTreeMap<String, Doc>,
}

impl Default for Topic {
    fn default() -> Self {
        Self {
            head: 0,
            retention_floor: 0,
            epoch: 1,
            epoch_start: 0,
            rows: VecDeque::new(),
            docs: BTreeMap::new(),
        }
    }
}

impl Topic {
    fn state(&self, name: &str) -> TopicState {
        TopicState {
            topic: name.to_owned(),
            head_watermark: self.head,
            retention_floor: self.retention_floor,
            epoch: self.epoch,
            epoch_start: self.epoch_start,
        }
    }

    fn push(
        &mut self,
        topic: &str,
        doc_key: &str,
        doc_version: u64,
        payload: Value,
        owner: DocOwner,
    ) -> StreamRow {
        self.head += 1;
        let payload_hash = aggregates::canonical::hash_canonical(&payload);
        let row = StreamRow {
            topic: topic.to_owned(),
            watermark: self.head,
            doc_key: doc_key.to_owned(),
            doc_version,
            payload: payload.to_string(),
            payload_hash: payload_hash.clone(),
            owner: owner.clone(),
        };
        self.docs.insert(
            doc_key.to_owned(),
            Doc {
                doc_key: doc_key.to_owned(),
                doc_version,
                payload,
                payload_hash,
                watermark: self.head,
                owner,
            },
        );
        self.rows.push_back(row.clone());
        row
    }
}

/// The in-memory sync stream. Cheap to share (`Arc`).
pub struct MemorySource {
    /// std Mutex: held only for in-memory reads and writes, never across an await.
    topics: Mutex<HashMap<String, Topic>>,
    /// Bumped after every change; the gateway's tailers wait on it.
    heads: watch::Sender<u64>,
    /// Sabotage switch for failure-path tests: every read fails while set.
    unavailable: AtomicBool,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource {
    pub fn new() -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            heads: watch::channel(0).0,
            unavailable: AtomicBool::new(false),
        }
    }

    fn bump(&self) {
        self.heads.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().expect("memory source lock poisoned")
    }

    /// Commits one document change: the next watermark of `topic`, `doc_version` = previous + 1.
    pub fn append(&self, topic: &str, doc_key: &str, payload: Value, owner: DocOwner) -> StreamRow {
        let row = {
            let mut topics = self.lock();
            let t = topics.entry(topic.to_owned()).or_default();
            let version = t.docs.get(doc_key).map_or(1, |d| d.doc_version + 1);
            t.push(topic, doc_key, version, payload, owner)
        };
        self.bump();
        row
    }

    /// Commits several changes at once (one wake-up), like one projector transaction.
    pub fn append_many(
        &self,
        topic: &str,
        rows: impl IntoIterator<Item = (String, Value, DocOwner)>,
    ) -> u64 {
        let head = {
            let mut topics = self.lock();
            let t = topics.entry(topic.to_owned()).or_default();
            for (doc_key, payload, owner) in rows {
                let version = t.docs.get(&doc_key).map_or(1, |d| d.doc_version + 1);
                t.push(topic, &doc_key, version, payload, owner);
            }
            t.head
        };
        self.bump();
        head
    }

    /// Prunes rows with `watermark <= through` and raises the retention floor to `through`.
    pub fn prune_through(&self, topic: &str, through: u64) {
        {
            let mut topics = self.lock();
            let t = topics.entry(topic.to_owned()).or_default();
            while t.rows.front().is_some_and(|r| r.watermark <= through) {
                t.rows.pop_front();
            }
            t.retention_floor = t.retention_floor.max(through.min(t.head));
        }
        self.bump();
    }

    /// A full rebuild, with the store's epoch semantics (`projectors::store`
    /// `finish_rebuild`): the topic's old rows are dropped and ONE epoch marker row (doc key
    /// [`epoch_marker_key`], no owner, so delivered to nobody; `doc_version` = the new epoch)
    /// takes the next watermark W = old head + 1; `epoch += 1` and `epoch_start =
    /// retention_floor = W`. Every cursor from before the rebuild (including the old head) is
    /// therefore stale with `epoch_changed`. The current documents stay (a rebuild of an
    /// unchanged journal folds to the same ones) and are consistent with W; they are not
    /// re-appended to the stream, so clients re-hydrate.
    pub fn rebuild(&self, topic: &str) {
        {
            let mut topics = self.lock();
            let t = topics.entry(topic.to_owned()).or_default();
            t.epoch += 1;
            t.head += 1;
            let marker = t.head;
            let payload = serde_json::json!({"epoch": t.epoch, "reason": "rebuild"});
            t.rows.clear();
            t.rows.push_back(StreamRow {
                topic: topic.to_owned(),
                watermark: marker,
                doc_key: epoch_marker_key(topic),
                doc_version: t.epoch,
                payload_hash: aggregates::canonical::hash_canonical(&payload),
                payload: payload.to_string(),
                owner: DocOwner::default(),
            });
            for doc in t.docs.values_mut() {
                doc.watermark = marker;
            }
            t.epoch_start = marker;
            t.retention_floor = marker;
        }
        self.bump();
    }

    /// While set, every read fails (for failure-path tests).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// The current head of `topic`.
    pub fn head(&self, topic: &str) -> u64 {
        self.lock().get(topic).map_or(0, |t| t.head)
    }

    fn check(&self) -> Result<(), SourceError> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(SourceError::Unavailable(anyhow::anyhow!(
                "memory source switched off"
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl SyncSource for MemorySource {
    async fn topic_states(&self, topics: &[&str]) -> Result<Vec<TopicState>, SourceError> {
        self.check()?;
        let all = self.lock();
        Ok(topics
            .iter()
            .map(|name| match all.get(*name) {
                Some(t) => t.state(name),
                None => TopicState {
                    topic: (*name).to_owned(),
                    ..TopicState::default()
                },
            })
            .collect())
    }

    async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, SourceError> {
        self.check()?;
        let all = self.lock();
        let Some(t) = all.get(topic) else {
            return Ok(Vec::new());
        };
        if after < t.retention_floor {
            return Err(SourceError::Stale {
                state: t.state(topic),
            });
        }
        let first = match t.rows.front() {
            Some(row) => row.watermark,
            None => return Ok(Vec::new()),
        };
        let start =
            usize::try_from(after.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        Ok(t.rows
            .range(start.min(t.rows.len())..)
            .filter(|row| owner.matches(&row.owner))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn hydrate(
        &self,
        topic: &str,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        owner: &OwnerFilter,
    ) -> Result<Hydration, SourceError> {
        self.check()?;
        let all = self.lock();
        let Some(t) = all.get(topic) else {
            return Ok(Hydration {
                topic: topic.to_owned(),
                watermark: 0,
                docs: Vec::new(),
                next_after: None,
            });
        };
        // Keys iterate in byte order, the order the stores page in.
        let docs: Vec<Doc> = t
            .docs
            .values()
            .filter(|d| doc_key.is_none_or(|k| k == d.doc_key))
            .filter(|d| page.after.is_none_or(|after| d.doc_key.as_str() > after))
            .filter(|d| owner.matches(&d.owner))
            .take(page.limit.saturating_add(1))
            .cloned()
            .collect();
        let (docs, next_after) = page.finish(docs, |d| d.doc_key.as_str());
        Ok(Hydration {
            topic: topic.to_owned(),
            watermark: t.head,
            docs,
            next_after,
        })
    }

    fn subscribe_heads(&self) -> watch::Receiver<u64> {
        self.heads.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> OwnerFilter {
        OwnerFilter::Principal {
            user_id: Some("alice".into()),
            guest_scope: None,
            org_id: None,
        }
    }

    #[tokio::test]
    async fn watermarks_are_gapless_and_versions_count_per_doc() {
        let source = MemorySource::new();
        source.append("t", "a", json!({"n": 1}), DocOwner::user("alice"));
        source.append("t", "b", json!({"n": 2}), DocOwner::user("bob"));
        let row = source.append("t", "a", json!({"n": 3}), DocOwner::user("alice"));
        assert_eq!((row.watermark, row.doc_version), (3, 2));
        let rows = source
            .read_stream("t", 0, 10, &OwnerFilter::Any)
            .await
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.watermark).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let mine = source.read_stream("t", 1, 10, &alice()).await.unwrap();
        assert_eq!(mine.iter().map(|r| r.watermark).collect::<Vec<_>>(), [3]);
    }

    #[tokio::test]
    async fn pruning_and_rebuilds_move_the_floor_and_epoch() {
        let source = MemorySource::new();
        for i in 0..5 {
            source.append(
                "t",
                &format!("d{}", i % 2),
                json!({"i": i}),
                DocOwner::user("alice"),
            );
        }
        source.prune_through("t", 3);
        let state = &source.topic_states(&["t"]).await.unwrap()[0];
        assert_eq!(
            (state.head_watermark, state.retention_floor, state.epoch),
            (5, 3, 1)
        );
        let rows = source
            .read_stream("t", 3, 10, &OwnerFilter::Any)
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|r| r.watermark).collect::<Vec<_>>(), [4, 5]);

        source.rebuild("t");
        let state = &source.topic_states(&["t"]).await.unwrap()[0];
        assert_eq!(
            (
                state.head_watermark,
                state.epoch,
                state.epoch_start,
                state.retention_floor
            ),
            (6, 2, 6, 6),
            "the marker row takes old head + 1, which starts the epoch and is the floor"
        );
        // The old head is a cursor of the old epoch.
        assert!(matches!(
            source.read_stream("t", 5, 10, &OwnerFilter::Any).await,
            Err(SourceError::Stale { .. })
        ));
        let all = source
            .read_stream("t", 6, 10, &OwnerFilter::Any)
            .await
            .unwrap();
        assert!(all.is_empty(), "nothing after the marker yet");
        // The only row left is the marker, and it is nobody's (it sits at the floor, so no
        // read ever returns it; it only separates the epochs).
        {
            let topics = source.lock();
            let t = topics.get("t").unwrap();
            let marker: Vec<_> = t.rows.iter().collect();
            assert_eq!(marker.len(), 1);
            assert_eq!(marker[0].watermark, 6);
            assert_eq!(marker[0].doc_key, "runtime/sync_epoch:t");
            assert_eq!(marker[0].owner, DocOwner::default());
        }
        let hydration = source
            .hydrate("t", None, HydratePage::ALL, &alice())
            .await
            .unwrap();
        assert_eq!(hydration.watermark, 6);
        assert_eq!(hydration.docs.len(), 2);
        assert!(hydration.docs.iter().all(|d| d.watermark == 6));
        // The marker is delivered to nobody; later rows continue after it.
        let row = source.append("t", "d0", json!({"i": 9}), DocOwner::user("alice"));
        assert_eq!((row.watermark, row.doc_version), (7, 4));
        let mine = source.read_stream("t", 6, 10, &alice()).await.unwrap();
        assert_eq!(mine.iter().map(|r| r.watermark).collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn owner_filter_follows_the_contract() {
        let row = DocOwner {
            user_id: Some("u1".into()),
            guest_scope: Some("g1".into()),
            org_id: Some("o1".into()),
        };
        let filter = |u: Option<&str>, g: Option<&str>, o: Option<&str>| OwnerFilter::Principal {
            user_id: u.map(Into::into),
            guest_scope: g.map(Into::into),
            org_id: o.map(Into::into),
        };
        assert!(
            !filter(Some("u1"), None, None).matches(&row),
            "org-less token, org doc"
        );
        assert!(filter(Some("u1"), None, Some("o1")).matches(&row));
        assert!(filter(None, Some("g1"), Some("o1")).matches(&row));
        let personal = DocOwner {
            org_id: None,
            ..row.clone()
        };
        assert!(filter(Some("u1"), None, None).matches(&personal));
        assert!(
            !filter(Some("u1"), None, Some("o1")).matches(&personal),
            "org token, org-less doc"
        );
        assert!(!filter(Some("u1"), None, Some("o2")).matches(&row));
        assert!(!filter(Some("u2"), None, None).matches(&row));
        assert!(!filter(None, None, None).matches(&row));
        assert!(OwnerFilter::Any.matches(&row));
    }
}

//! [`StoreSource`]: the gateway's view of the projectors' store (PostgreSQL or SQLite), woken by
//! the projectors' stream-head notices (in-process, and across processes through the relay).

use std::sync::Arc;

use async_trait::async_trait;
use projectors::store::{self, ReadError, SyncStore};
use projectors::SyncNotifier;
use serde_json::Value;
use tokio::sync::watch;

use super::{
    Doc, HydratePage, Hydration, OwnerFilter, SourceError, StreamRow, SyncSource, TopicState,
};

/// The projectors' store as a [`SyncSource`]. Cheap to clone.
#[derive(Clone)]
pub struct StoreSource {
    store: SyncStore,
    notifier: Arc<SyncNotifier>,
}

impl StoreSource {
    pub fn new(store: SyncStore, notifier: Arc<SyncNotifier>) -> Self {
        Self { store, notifier }
    }
}

fn state(s: store::TopicState) -> TopicState {
    TopicState {
        topic: s.topic,
        head_watermark: s.head_watermark,
        retention_floor: s.retention_floor,
        epoch: s.epoch,
        epoch_start: s.epoch_start,
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> SourceError {
    SourceError::Unavailable(anyhow::Error::new(e))
}

fn payload(text: &str, what: &str) -> Result<Value, SourceError> {
    serde_json::from_str(text)
        .map_err(|e| SourceError::Unavailable(anyhow::anyhow!("stored payload of {what}: {e}")))
}

/// A stream row's payload text, passed through unparsed (the store holds the projector's own
/// compact serialization: a `json` column on PostgreSQL, text on SQLite). Only its shape is
/// checked, so a damaged row fails the read instead of breaking a frame.
fn payload_text(text: String, what: &str) -> Result<String, SourceError> {
    let trimmed = text.trim_ascii();
    if trimmed.starts_with('{') && trimmed.ends_with('}') {
        Ok(text)
    } else {
        Err(SourceError::Unavailable(anyhow::anyhow!(
            "stored payload of {what} is not a JSON object"
        )))
    }
}

#[async_trait]
impl SyncSource for StoreSource {
    async fn topic_states(&self, topics: &[&str]) -> Result<Vec<TopicState>, SourceError> {
        let states = self.store.topic_states(topics).await.map_err(unavailable)?;
        Ok(states.into_iter().map(state).collect())
    }

    async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, SourceError> {
        let rows = match self.store.read_stream(topic, after, limit, owner).await {
            Ok(rows) => rows,
            Err(ReadError::Stale { state: s, .. }) => {
                return Err(SourceError::Stale { state: state(s) })
            }
            Err(ReadError::UnknownTopic(_)) => return Ok(Vec::new()),
            Err(ReadError::Store(e)) => return Err(unavailable(e)),
        };
        rows.into_iter()
            .map(|r| {
                Ok(StreamRow {
                    payload: payload_text(r.payload, &r.doc_key)?,
                    topic: r.topic,
                    watermark: r.watermark,
                    doc_key: r.doc_key,
                    doc_version: r.doc_version,
                    payload_hash: r.payload_hash,
                    owner: r.owner,
                })
            })
            .collect()
    }

    async fn hydrate(
        &self,
        topic: &str,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        owner: &OwnerFilter,
    ) -> Result<Hydration, SourceError> {
        let hydration = match self.store.hydrate(topic, doc_key, page, owner).await {
            Ok(h) => h,
            Err(ReadError::UnknownTopic(_)) => {
                // A known topic nothing projects yet (e.g. runtime.notifications): its head.
                let head = self
                    .store
                    .topic_states(&[topic])
                    .await
                    .map_err(unavailable)?
                    .pop()
                    .map_or(0, |s| s.head_watermark);
                return Ok(Hydration {
                    topic: topic.to_owned(),
                    watermark: head,
                    docs: Vec::new(),
                    next_after: None,
                });
            }
            Err(ReadError::Stale { .. }) => {
                return Err(SourceError::Unavailable(anyhow::anyhow!(
                    "hydration cannot be stale"
                )))
            }
            Err(ReadError::Store(e)) => return Err(unavailable(e)),
        };
        let docs = hydration
            .docs
            .into_iter()
            .map(|d| {
                Ok(Doc {
                    payload: payload(&d.payload, &d.doc_key)?,
                    doc_key: d.doc_key,
                    doc_version: d.doc_version,
                    payload_hash: d.payload_hash,
                    watermark: d.watermark,
                    owner: d.owner,
                })
            })
            .collect::<Result<_, SourceError>>()?;
        Ok(Hydration {
            topic: hydration.topic,
            watermark: hydration.watermark,
            docs,
            next_after: hydration.next_after,
        })
    }

    fn subscribe_heads(&self) -> watch::Receiver<u64> {
        self.notifier.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_payload_text_passes_through_unchanged_unless_it_is_not_an_object() {
        let text = r#"{"status":"running","n":1.5,"s":"a\"b"}"#.to_owned();
        assert_eq!(payload_text(text.clone(), "k").unwrap(), text);
        for damaged in ["", "[1]", "{\"a\":1", "null"] {
            assert!(matches!(
                payload_text(damaged.to_owned(), "k"),
                Err(SourceError::Unavailable(_))
            ));
        }
    }
}

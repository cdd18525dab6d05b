//! [`StoreSource`]: the gateway's view of the projectors' store (PostgreSQL or SQLite), woken by
//! the projectors' stream-head notices (in-process, and across processes through the relay).
//! [`StoreSource::replica`] reads a hot standby instead and asks the primary only for heads
//! (docs/adr/0125-read-replicas.md).

use std::sync::Arc;

use async_trait::async_trait;
use projectors::store::{self, ReadError, SyncStore};
use projectors::SyncNotifier;
use serde_json::Value;
use tokio::sync::watch;

use super::{
    Doc, HydratePage, Hydration, JoinedPage, OwnerFilter, SourceError, StreamPage, StreamRow,
    SyncSource, TopicState,
};

/// The projectors' store as a [`SyncSource`]. Cheap to clone.
#[derive(Clone)]
pub struct StoreSource {
    /// Where every read goes: the primary, or a replica of it.
    store: SyncStore,
    notifier: Arc<SyncNotifier>,
    /// The primary when `store` is a replica: asked for topic heads only (one indexed row per
    /// topic), never for rows or documents.
    primary: Option<SyncStore>,
}

impl StoreSource {
    /// Reads `store`, the primary (the store the projectors write).
    pub fn new(store: SyncStore, notifier: Arc<SyncNotifier>) -> Self {
        Self {
            store,
            notifier,
            primary: None,
        }
    }

    /// Reads `replica`, a hot standby of `primary` that replays its commits in order but may lag
    /// (or, just after a restart, step back): rows and documents come from the replica, topic
    /// heads for wait decisions from `primary`.
    pub fn replica(replica: SyncStore, primary: SyncStore, notifier: Arc<SyncNotifier>) -> Self {
        Self {
            store: replica,
            notifier,
            primary: Some(primary),
        }
    }

    /// A store failure as the source's error: the replica unreachable is its own case.
    fn failed(&self, e: store::StoreError) -> SourceError {
        if self.primary.is_some() && replica_down(&e) {
            SourceError::ReplicaUnavailable(anyhow::Error::new(e))
        } else {
            unavailable(e)
        }
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

/// Whether a replica's failure means it is down or not serving yet (rather than a fault of the
/// read): unreachable, shutting down or starting up (SQLSTATE class 57P), a broken connection
/// (08), or a read cancelled by a recovery conflict (40001 on a standby).
fn replica_down(e: &store::StoreError) -> bool {
    if e.is_unavailable() {
        return true;
    }
    match e {
        store::StoreError::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08") || c == "40001"),
        _ => false,
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
        let states = self
            .store
            .topic_states(topics)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(states.into_iter().map(state).collect())
    }

    async fn primary_heads(&self, topics: &[&str]) -> Result<Option<Vec<u64>>, SourceError> {
        let Some(primary) = &self.primary else {
            return Ok(None);
        };
        let states = primary.topic_states(topics).await.map_err(unavailable)?;
        Ok(Some(states.iter().map(|s| s.head_watermark).collect()))
    }

    async fn read_stream_page(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<StreamPage, SourceError> {
        let page = match self
            .store
            .read_stream_page(topic, after, limit, owner)
            .await
        {
            Ok(page) => page,
            Err(ReadError::Stale { state: s, .. }) => {
                return Err(SourceError::Stale { state: state(s) })
            }
            Err(ReadError::UnknownTopic(_)) => return Ok(StreamPage::default()),
            Err(ReadError::Store(e)) => return Err(self.failed(e)),
        };
        let rows = page
            .rows
            .into_iter()
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
            .collect::<Result<_, SourceError>>()?;
        Ok(StreamPage {
            rows,
            head_watermark: page.state.head_watermark,
        })
    }

    async fn read_stream_joined(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
        max_update_bytes: usize,
    ) -> Result<Option<JoinedPage>, SourceError> {
        if !self.store.prefers_joined_pages() {
            return Ok(None);
        }
        let page = match self
            .store
            .read_stream_joined(topic, after, limit, owner, max_update_bytes)
            .await
        {
            Ok(page) => page,
            Err(ReadError::Stale { state: s, .. }) => {
                return Err(SourceError::Stale { state: state(s) })
            }
            Err(ReadError::UnknownTopic(_)) => return Ok(Some(JoinedPage::default())),
            Err(ReadError::Store(e)) => return Err(self.failed(e)),
        };
        if page.damaged > 0 {
            // Read row by row, which names the damaged document.
            return Ok(None);
        }
        Ok(Some(JoinedPage {
            json: page.json,
            rows: page.rows,
            last_watermark: page.last_watermark,
            head_watermark: page.state.head_watermark,
        }))
    }

    async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, SourceError> {
        Ok(self
            .read_stream_page(topic, after, limit, owner)
            .await?
            .rows)
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
                    .map_err(|e| self.failed(e))?
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
            Err(ReadError::Store(e)) => return Err(self.failed(e)),
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

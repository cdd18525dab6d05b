//! What the gateway reads: the projectors' sync stream and read models, behind the
//! [`SyncSource`] trait (the semantics of `projectors::store`).
//!
//! The gateway only ever reads through this trait. [`store::StoreSource`] is the runtime's: the
//! projectors' [`SyncStore`](projectors::store::SyncStore) (PostgreSQL or SQLite) woken by their
//! [`SyncNotifier`](projectors::SyncNotifier). [`memory::MemorySource`] implements the same
//! contract in memory (unit tests, the fan-out bench).

pub mod memory;
pub mod store;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

pub use memory::MemorySource;
/// Owners, filters and hydration pages are the projectors' own types.
pub use projectors::model::{DocOwner, OwnerFilter};
pub use projectors::store::HydratePage;
pub use store::StoreSource;

/// One row of a topic's sync stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamRow {
    pub topic: String,
    pub watermark: u64,
    pub doc_key: String,
    pub doc_version: u64,
    /// The payload, a JSON object, as the compact JSON text the projector wrote. Sessions splice
    /// it into frames as is: a replayed or live row is never parsed and re-serialized on its
    /// way to the client.
    pub payload: String,
    /// `sha256:` + hex SHA-256 of the canonical JSON of `payload`.
    pub payload_hash: String,
    pub owner: DocOwner,
}

/// A topic's watermarks and epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicState {
    pub topic: String,
    /// Last allocated watermark (0 = none).
    pub head_watermark: u64,
    /// Cursors strictly below this cannot be served by replay.
    pub retention_floor: u64,
    /// Starts at 1; a full rebuild starts a new epoch.
    pub epoch: u64,
    /// Where the current epoch starts: cursors below it belong to an older epoch (0 in the
    /// first epoch).
    pub epoch_start: u64,
}

/// One page of a topic's stream with the head it is complete up to: every row passing the
/// owner filter with a watermark in `(after, head_watermark]` is in `rows` unless the page is
/// full. A reader may move its cursor to `head_watermark` after a short page, and never further.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamPage {
    pub rows: Vec<StreamRow>,
    pub head_watermark: u64,
}

/// One page of a topic's stream as the update objects a `sync:update_batch` carries, already
/// joined with commas in watermark order, with the head it is complete up to (as
/// [`StreamPage`]): what a replaying session splices into its frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinedPage {
    /// The update objects, comma-separated (empty for an empty page).
    pub json: String,
    pub rows: usize,
    /// The watermark of the page's last row (0 when it has none).
    pub last_watermark: u64,
    pub head_watermark: u64,
}

/// A current document.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub doc_key: String,
    pub doc_version: u64,
    pub payload: Value,
    pub payload_hash: String,
    pub watermark: u64,
    pub owner: DocOwner,
}

/// A topic's documents exactly as of `watermark`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hydration {
    pub topic: String,
    pub watermark: u64,
    pub docs: Vec<Doc>,
    /// The last key of this page when more documents follow (the next page's `after`).
    pub next_after: Option<String>,
}

/// Failures of the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `read_stream` was asked for rows after a cursor below the topic's retention floor
    /// (checked in the same snapshot as the read): the reader must not assume it saw everything.
    /// The gateway reports `stale_cursor` to the client.
    #[error("cursor of {} is below its retention floor {}", state.topic, state.retention_floor)]
    Stale { state: TopicState },
    /// The read replica (`--read-database-url`) cannot be reached: a hot standby down or
    /// restarting. Hydration answers `503 replica_unavailable`; sessions keep their sockets and
    /// resume when it is back (docs/adr/0125-read-replicas.md).
    #[error("read replica unavailable")]
    ReplicaUnavailable(#[source] anyhow::Error),
    /// Anything else; clients get `internal`.
    #[error("sync source unavailable")]
    Unavailable(#[source] anyhow::Error),
}

/// The read API the gateway needs from the projectors.
///
/// Implementations must keep the contract's invariants: per topic, watermarks are gapless and
/// commit-ordered, so a reader that sees watermark N+1 also sees N.
#[async_trait]
pub trait SyncSource: Send + Sync + 'static {
    /// States of `topics`, in the same order; unknown topics get a state of zeros.
    async fn topic_states(&self, topics: &[&str]) -> Result<Vec<TopicState>, SourceError>;

    /// Rows of `topic` with `watermark > after`, ascending, at most `limit`, filtered by owner.
    /// [`SourceError::Stale`] when `after` is below the retention floor, checked in the same
    /// snapshot as the read.
    async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, SourceError>;

    /// [`SyncSource::read_stream`] and the head the page is complete up to, from the read's own
    /// snapshot. The default reads the topic's state first and then the rows, which is exact
    /// for a source that never steps back (memory, the primary); a source that can (a replica
    /// that restarts behind where it was) overrides it with one snapshot.
    ///
    /// # Errors
    /// As [`SyncSource::read_stream`].
    async fn read_stream_page(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<StreamPage, SourceError> {
        let head = self
            .topic_states(&[topic])
            .await?
            .pop()
            .map_or(0, |s| s.head_watermark);
        let rows = self.read_stream(topic, after, limit, owner).await?;
        Ok(StreamPage {
            rows,
            head_watermark: head,
        })
    }

    /// [`SyncSource::read_stream_page`] with the rows' update objects already built and joined
    /// (payloads over `max_update_bytes` as pointers, as `PreparedRow` writes them), for a
    /// source that builds them cheaper than row by row (the store: one row to decode per page).
    /// The page, its head and the retention floor ([`SourceError::Stale`]) come from one
    /// snapshot, so a reader needs no second read to trust it. `Ok(None)`, the default, when
    /// this source does not join, or not this page (a damaged row): the reader reads the page
    /// row by row instead.
    ///
    /// # Errors
    /// As [`SyncSource::read_stream`].
    async fn read_stream_joined(
        &self,
        _topic: &str,
        _after: u64,
        _limit: usize,
        _owner: &OwnerFilter,
        _max_update_bytes: usize,
    ) -> Result<Option<JoinedPage>, SourceError> {
        Ok(None)
    }

    /// The heads of `topics` on the primary when this source reads a replica that lags it
    /// (`--read-database-url`), in the same order; `Ok(None)` when this source is itself the
    /// authority (its own heads are the truth). Readers use it to tell a watermark the replica
    /// has not replayed yet (wait) from one nobody wrote (refuse), and to know how far a
    /// wake-up asks them to read.
    ///
    /// # Errors
    /// [`SourceError::Unavailable`] when the primary cannot be read.
    async fn primary_heads(&self, _topics: &[&str]) -> Result<Option<Vec<u64>>, SourceError> {
        Ok(None)
    }

    /// One page (keys after `page.after` in byte order, at most `page.limit`) of one consistent
    /// snapshot of `topic`'s current docs (or the one `doc_key`), with the snapshot's head.
    async fn hydrate(
        &self,
        topic: &str,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        owner: &OwnerFilter,
    ) -> Result<Hydration, SourceError>;

    /// A receiver that changes whenever any topic's head may have moved (a wake-up only:
    /// consumers re-read the source).
    fn subscribe_heads(&self) -> watch::Receiver<u64>;
}

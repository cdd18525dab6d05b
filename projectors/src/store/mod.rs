//! The projection store: checkpoints and leases, topic watermarks, the sync stream and the
//! current-document tables, in PostgreSQL or the embedded SQLite file (`migrations/*/…_projections.sql`).
//!
//! Writes happen in [`SyncStore::commit`], one transaction per batch that (1) locks the
//! projector's checkpoint row and checks that the caller still holds the lease and that the
//! cursor is where the caller left it, (2) allocates the batch's watermarks from the topic row,
//! (3) appends the stream rows, (4) upserts the documents and (5) advances the checkpoint. A
//! crash anywhere leaves all of it or none of it; a process whose lease was taken over cannot
//! commit (the row lock serialises it behind the new holder, which changed `lease_owner`).
//!
//! Reads for the gateway ([`SyncStore::read_stream`], [`SyncStore::hydrate`]) see one snapshot:
//! the topic's floor and head together with its rows or documents.
//!
//! The SQL is written once (`sql/`), generic over a dialect (`dialect.rs`) that spells the few
//! differences between PostgreSQL and SQLite.

mod dialect;
mod sql;

use std::collections::HashMap;
use std::sync::Arc;

use engine::journal::GlobalCursor;
use engine::Database;
use serde::Serialize;

use crate::model::{DocOwner, OwnerFilter};

use sql::SqlStore;

/// What the store needs to know about a projector: its checkpoint name, its topic and its
/// document table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectorSpec {
    pub name: &'static str,
    pub topic: &'static str,
    pub table: &'static str,
    pub version: u32,
    pub docs_are_events: bool,
}

/// The doc key of a topic's epoch marker: the stream row a full rebuild writes at the start of
/// the new epoch. It has no owner, so it is delivered to nobody; it only occupies the watermark
/// that separates the epochs.
pub fn epoch_marker_key(topic: &str) -> String {
    format!("runtime/sync_epoch:{topic}")
}

/// A full rebuild in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RebuildState {
    pub version: u32,
    pub cursor: GlobalCursor,
    pub events: u64,
    pub started_at_ms: i64,
}

/// A projector's checkpoint row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub projector: String,
    pub topic: String,
    /// The version the live documents were built with.
    pub projection_version: u32,
    pub cursor: GlobalCursor,
    pub events_projected: u64,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: i64,
    pub rebuild_requested: bool,
    pub rebuild: Option<RebuildState>,
    pub last_rebuilt_at_ms: Option<i64>,
    pub updated_at_ms: i64,
}

/// A topic's watermarks and epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TopicState {
    pub topic: String,
    /// The last allocated watermark (0: none yet).
    pub head_watermark: u64,
    /// Cursors strictly below this cannot be replayed.
    pub retention_floor: u64,
    /// 1, then +1 per full rebuild.
    pub epoch: u64,
    /// The first watermark of the current epoch (its marker row); 0 in the first epoch. Cursors
    /// below it belong to an older epoch.
    pub epoch_start: u64,
}

/// One sync stream row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRow {
    pub topic: String,
    pub watermark: u64,
    pub doc_key: String,
    pub doc_version: u64,
    /// JSON text of the payload, exactly as projected.
    pub payload: String,
    /// `sha256:` + hex SHA-256 of the payload's canonical JSON.
    pub payload_hash: String,
    pub owner: DocOwner,
    pub projected_at_ms: i64,
}

/// One page of a topic's stream and the topic's state in the snapshot it was read in: every row
/// passing the filter with a watermark in `(after, state.head_watermark]` is in `rows` unless
/// the page is full (the stream is gapless and commit-ordered, so a snapshot that holds the head
/// holds every row below it — on a hot standby too, which replays commits in the primary's
/// order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPage {
    pub state: TopicState,
    pub rows: Vec<StreamRow>,
}

/// One page of a topic's stream as the `updates` of a `sync:update_batch`: the rows' update
/// objects ([`update_object`]) built by the database and joined with commas in watermark order,
/// with the topic's state from the same snapshot. The page holds what [`StreamPage`] would hold
/// for the same arguments; a replaying session splices it into its frame without a row of its
/// own per update (docs/adr/0132-joined-replay-pages.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedPage {
    pub state: TopicState,
    /// How many rows the page joins.
    pub rows: usize,
    /// The watermark of the page's last row (0 when it has none).
    pub last_watermark: u64,
    /// The update objects, comma-separated (empty when the page has no rows).
    pub json: String,
    /// Rows whose stored payload does not look like a JSON object (`{…}`): their update objects
    /// are not to be sent; a reader reads such a page row by row and reports the damage.
    pub damaged: usize,
}

impl JoinedPage {
    /// A page without rows.
    pub fn empty(state: TopicState) -> Self {
        Self {
            state,
            rows: 0,
            last_watermark: 0,
            json: String::new(),
            damaged: 0,
        }
    }
}

/// The update object of a stream row as Khala sends it (`{"topic":…,"doc_key":…,"doc_version":…,
/// "payload":…,"payload_hash":…,"watermark":…,"hydration_required":…}`): its members in wire
/// order, declared once for the gateway's live rows and the store's [`JoinedPage`]s. A payload
/// larger than the gateway's per-update limit is sent as `null` with `hydration_required: true`.
pub mod update_object {
    /// Text before the topic (a JSON string).
    pub const TOPIC: &str = "{\"topic\":";
    /// Text before the doc key (a JSON string).
    pub const DOC_KEY: &str = ",\"doc_key\":";
    /// Text before the doc version (an integer).
    pub const DOC_VERSION: &str = ",\"doc_version\":";
    /// Text before the payload (the stored JSON text, or `null` for a pointer).
    pub const PAYLOAD: &str = ",\"payload\":";
    /// Text before the payload hash (a JSON string).
    pub const PAYLOAD_HASH: &str = ",\"payload_hash\":";
    /// Text before the watermark (an integer).
    pub const WATERMARK: &str = ",\"watermark\":";
    /// Text before `true` (a pointer) or `false`.
    pub const HYDRATION_REQUIRED: &str = ",\"hydration_required\":";
    /// The closing brace.
    pub const END: &str = "}";
    /// The payload of a pointer update.
    pub const POINTER_PAYLOAD: &str = "null";
}

/// One current document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocRow {
    pub doc_key: String,
    pub doc_version: u64,
    pub payload: String,
    pub payload_hash: String,
    /// The watermark of the document's last change.
    pub watermark: u64,
    pub owner: DocOwner,
    pub projected_at_ms: i64,
}

/// A topic's documents exactly as of `watermark`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hydration {
    pub topic: String,
    pub watermark: u64,
    pub docs: Vec<DocRow>,
    /// The last key of this page when more documents follow it (pass it as the next page's
    /// [`HydratePage::after`]); `None` when this page is the last.
    pub next_after: Option<String>,
}

/// Which slice of a topic's documents a hydration reads: the keys after `after` in byte order
/// (the order pages are read in), at most `limit` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HydratePage<'a> {
    pub after: Option<&'a str>,
    pub limit: usize,
}

impl HydratePage<'_> {
    /// Every document in one page: for in-process callers that know the topic is small (tests,
    /// drift checks). Network callers always pass a bounded page.
    pub const ALL: HydratePage<'static> = HydratePage {
        after: None,
        limit: usize::MAX,
    };

    /// The row count to fetch: one more than the page so the store learns whether more follow.
    pub(crate) fn fetch_limit(&self) -> i64 {
        i64::try_from(self.limit.saturating_add(1)).unwrap_or(i64::MAX)
    }

    /// Cuts `docs` (fetched with `fetch_limit`, in key order) to the page and names the
    /// next page: the last kept key when more followed. `key` reads a document's key (the
    /// stores' rows and the gateway's in-memory documents are different types).
    pub fn finish<T>(
        &self,
        mut docs: Vec<T>,
        key: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Option<String>) {
        if docs.len() > self.limit {
            docs.truncate(self.limit);
            let next = docs.last().map(|d| key(d).to_owned());
            (docs, next)
        } else {
            (docs, None)
        }
    }
}

/// A change to append to the stream (its watermark is allocated at commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRow {
    pub doc_key: String,
    pub doc_version: u64,
    pub payload: String,
    pub payload_hash: String,
    pub owner: DocOwner,
    pub projected_at_ms: i64,
}

/// A document's final state in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocWrite {
    pub doc_key: String,
    pub doc_version: u64,
    pub payload: String,
    pub payload_hash: String,
    pub owner: DocOwner,
    pub projected_at_ms: i64,
    /// Index into the batch's rows of the document's last change (live batches), so its
    /// `watermark` column can be set; `None` in rebuild batches.
    pub last_row: Option<usize>,
}

/// Where a batch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The live documents and the stream; moves the checkpoint cursor.
    Live,
    /// The rebuild shadow table; moves the rebuild cursor. No stream rows.
    Rebuild,
}

/// One batch to commit.
#[derive(Clone, Debug)]
pub struct BatchCommit<'a> {
    pub spec: &'a ProjectorSpec,
    pub target: Target,
    /// The lease holder.
    pub owner: &'a str,
    /// The cursor the batch started from (must still be the stored one).
    pub from: GlobalCursor,
    pub to: GlobalCursor,
    /// Journal events the batch covered (relevant or not).
    pub events: u64,
    pub rows: Vec<NewRow>,
    pub docs: Vec<DocWrite>,
    pub now_ms: i64,
    /// The lease is extended to `now_ms + lease_ttl_ms`.
    pub lease_ttl_ms: i64,
}

/// What a commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// The topic head after the commit.
    pub head_watermark: u64,
    /// The first watermark the batch allocated (when it had rows).
    pub first_watermark: Option<u64>,
}

/// What a prune did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows: u64,
    pub docs: u64,
    pub retention_floor: u64,
}

/// What a rebuild's swap did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swapped {
    pub epoch: u64,
    pub epoch_start: u64,
    pub docs: u64,
}

/// Store failures that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the projector's lease now: stop projecting.
    #[error("the lease of projector {0} is held by another process")]
    LeaseLost(String),
    /// The stored cursor is not where the batch started: someone else committed. Re-read.
    #[error("the checkpoint of projector {0} moved")]
    CursorMoved(String),
    /// The projector has no checkpoint row (not registered).
    #[error("unknown projector {0}")]
    UnknownProjector(String),
    /// A rebuild step was asked for when none (or another) is in progress.
    #[error("projector {projector}: {message}")]
    RebuildState { projector: String, message: String },
    #[error("corrupt projection row: {0}")]
    Corrupt(String),
    #[error("projection store database error")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True when the database could not be reached (retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// A read of the stream below the topic's retention floor.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cursor is below the floor (checked in the same snapshot as the read).
    #[error("cursor {after} of {} is below its retention floor {}", state.topic, state.retention_floor)]
    Stale { after: u64, state: TopicState },
    /// The topic has no document table.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> Self {
        ReadError::Store(StoreError::Database(e))
    }
}

/// A single document repaired by `reproject --run-id/--worker-id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repaired {
    /// The stored document already equals the fold of the journal.
    Unchanged,
    /// A new version was written (and a stream row appended).
    Written { doc_version: u64, watermark: u64 },
}

/// The projection store of one database. Cheap to clone.
#[derive(Clone)]
pub struct SyncStore {
    backend: Backend,
    /// topic → spec, for hydration and pruning.
    topics: Arc<HashMap<&'static str, ProjectorSpec>>,
}

#[derive(Clone)]
enum Backend {
    Postgres(SqlStore<sqlx::Postgres>),
    Sqlite(SqlStore<sqlx::Sqlite>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $body:expr) => {
        match &$self.backend {
            Backend::Postgres($s) => $body,
            Backend::Sqlite($s) => $body,
        }
    };
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

impl SyncStore {
    /// The store on `database` (migrated), knowing the given projectors' topics.
    pub fn new(database: &Database, specs: impl IntoIterator<Item = ProjectorSpec>) -> Self {
        let topics = specs.into_iter().map(|s| (s.topic, s)).collect();
        let backend = match database {
            Database::Postgres(pool) => Backend::Postgres(SqlStore::new(pool.clone(), None)),
            Database::Sqlite { pool, write_lock } => {
                Backend::Sqlite(SqlStore::new(pool.clone(), Some(write_lock.clone())))
            }
        };
        Self {
            backend,
            topics: Arc::new(topics),
        }
    }

    /// The spec of the projector writing `topic`.
    pub fn spec_of_topic(&self, topic: &str) -> Option<&ProjectorSpec> {
        self.topics.get(topic)
    }

    /// The topics with a projector, sorted.
    pub fn topics(&self) -> Vec<&'static str> {
        let mut topics: Vec<_> = self.topics.keys().copied().collect();
        topics.sort_unstable();
        topics
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The PostgreSQL pool, for the notification relay.
    pub fn pg_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(s) => Some(s.pool()),
            Backend::Sqlite(_) => None,
        }
    }

    /// Creates the projector's checkpoint row and its topic's sequence row if missing (a new
    /// projector starts at the beginning of the journal, as version `spec.version`).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn register(&self, spec: &ProjectorSpec, now_ms: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.register(spec, now_ms).await)
    }

    /// The checkpoint row of `projector`.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Corrupt`].
    pub async fn checkpoint(&self, projector: &str) -> Result<Option<Checkpoint>, StoreError> {
        dispatch!(self, s => s.checkpoint(projector).await)
    }

    /// Every checkpoint row, by name.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Corrupt`].
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        dispatch!(self, s => s.checkpoints().await)
    }

    /// Takes (or keeps) the projector's lease for `owner` if it is free, expired or already
    /// `owner`'s. Returns the checkpoint when `owner` holds the lease afterwards.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn try_acquire(
        &self,
        projector: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Checkpoint>, StoreError> {
        dispatch!(self, s => s.try_acquire(projector, owner, now_ms, ttl_ms).await)
    }

    /// Gives the lease up (graceful shutdown), so a peer takes over at once.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn release(&self, projector: &str, owner: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.release(projector, owner).await)
    }

    /// Documents of `spec`'s table (or its rebuild shadow) with the given keys.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Corrupt`].
    pub async fn load_docs(
        &self,
        spec: &ProjectorSpec,
        target: Target,
        keys: &[String],
    ) -> Result<Vec<DocRow>, StoreError> {
        dispatch!(self, s => s.load_docs(spec, target, keys).await)
    }

    /// Commits one batch (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], [`StoreError::CursorMoved`], [`StoreError::Database`]. Nothing
    /// is written unless `Ok`.
    pub async fn commit(&self, batch: BatchCommit<'_>) -> Result<Committed, StoreError> {
        dispatch!(self, s => s.commit(batch).await)
    }

    /// Marks every given projector for a full rebuild; the lease holder starts it.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn request_rebuild(&self, projector: &str, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.request_rebuild(projector, now_ms).await)
    }

    /// Starts a full rebuild of `spec` at version `spec.version`: empties the shadow table and
    /// sets the rebuild cursor to the start of the journal.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], [`StoreError::Database`].
    pub async fn begin_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.begin_rebuild(spec, owner, now_ms).await)
    }

    /// Ends a full rebuild: swaps the shadow documents in, starts a new epoch of the topic (its
    /// old stream rows are dropped and an epoch marker row takes the next watermark, which
    /// becomes the retention floor), and moves the live cursor to the rebuild cursor.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], [`StoreError::RebuildState`], [`StoreError::Database`].
    pub async fn finish_rebuild(
        &self,
        spec: &ProjectorSpec,
        owner: &str,
        now_ms: i64,
    ) -> Result<Swapped, StoreError> {
        dispatch!(self, s => s.finish_rebuild(spec, owner, now_ms).await)
    }

    /// Rewrites documents from the journal where they differ from the stored ones (an
    /// operator's repair, serialised with the projector through its checkpoint row): each
    /// differing document gets the next version and a stream row. `compute` gets the projector's
    /// cursor and must fold the entity's events up to it. With `only_existing`, documents the
    /// table does not hold are left alone (event histories: pruned documents stay pruned).
    ///
    /// # Errors
    /// [`StoreError::RebuildState`] while a full rebuild runs; [`StoreError::Database`].
    pub async fn repair_docs<F, Fut>(
        &self,
        spec: &ProjectorSpec,
        now_ms: i64,
        only_existing: bool,
        compute: F,
    ) -> Result<Vec<(String, Repaired)>, StoreError>
    where
        F: FnOnce(GlobalCursor) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Vec<DocWrite>, StoreError>> + Send,
    {
        dispatch!(self, s => s.repair_docs(spec, now_ms, only_existing, compute).await)
    }

    /// States of `topics`, in the same order; topics never written get a first-epoch state of
    /// zeros.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn topic_states(&self, topics: &[&str]) -> Result<Vec<TopicState>, StoreError> {
        dispatch!(self, s => s.topic_states(topics).await)
    }

    /// Rows of `topic` with `watermark > after`, ascending, at most `limit`, passing `filter`.
    ///
    /// # Errors
    /// [`ReadError::Stale`] when `after` is below the retention floor (same snapshot).
    pub async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, ReadError> {
        Ok(self
            .read_stream_page(topic, after, limit, filter)
            .await?
            .rows)
    }

    /// [`SyncStore::read_stream`] with the topic's state from the same snapshot: a reader of a
    /// store that may lag or step back (a hot standby catching up, or restarted) learns how far
    /// this read is complete from the read itself, never from an earlier one.
    ///
    /// # Errors
    /// As [`SyncStore::read_stream`].
    pub async fn read_stream_page(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
    ) -> Result<StreamPage, ReadError> {
        dispatch!(self, s => s.read_stream(topic, after, limit, filter).await)
    }

    /// Whether [`SyncStore::read_stream_joined`] reads a page faster than
    /// [`SyncStore::read_stream_page`] on this backend. On SQLite it does (2.4–2.7× the rows per
    /// second: the row read pays sqlx a value copy per column per row); on PostgreSQL it does
    /// not (the server builds the update objects slower than sqlx decodes the rows: 135k against
    /// 223k rows/s), so readers there keep the row read (docs/adr/0132-joined-replay-pages.md).
    pub fn prefers_joined_pages(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// [`SyncStore::read_stream_page`] as a [`JoinedPage`]: the same rows, as update objects
    /// already joined by the database, with payloads over `max_update_bytes` as pointers.
    ///
    /// # Errors
    /// As [`SyncStore::read_stream`].
    pub async fn read_stream_joined(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
        max_update_bytes: usize,
    ) -> Result<JoinedPage, ReadError> {
        dispatch!(self, s => s.read_stream_joined(topic, after, limit, filter, max_update_bytes, false).await)
    }

    /// [`SyncStore::read_stream_joined`] in the form it falls back to when a page comes back out
    /// of order: the order spelled out inside the aggregate. Public for the conformance suite,
    /// which checks that this form holds the same page.
    ///
    /// # Errors
    /// As [`SyncStore::read_stream`].
    #[doc(hidden)]
    pub async fn read_stream_joined_sorted(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
        max_update_bytes: usize,
    ) -> Result<JoinedPage, ReadError> {
        dispatch!(self, s => s.read_stream_joined(topic, after, limit, filter, max_update_bytes, true).await)
    }

    /// The topic's current documents passing `filter` (or the one `doc_key`), one page of them
    /// in key order, with the head watermark of the snapshot they were read in.
    ///
    /// # Errors
    /// [`ReadError::UnknownTopic`] for a topic without a projector.
    pub async fn hydrate(
        &self,
        topic: &str,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        filter: &OwnerFilter,
    ) -> Result<Hydration, ReadError> {
        let spec = self
            .topics
            .get(topic)
            .ok_or_else(|| ReadError::UnknownTopic(topic.to_owned()))?;
        dispatch!(self, s => s.hydrate(spec, doc_key, page, filter).await)
    }

    /// Prunes stream rows inserted before `cutoff_ms` (at most `max_rows` per call) and raises
    /// the retention floor to the last pruned watermark; for event-history topics, documents
    /// last written before the cutoff go too.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn prune(
        &self,
        spec: &ProjectorSpec,
        cutoff_ms: i64,
        max_rows: u64,
        now_ms: i64,
    ) -> Result<Pruned, StoreError> {
        dispatch!(self, s => s.prune(spec, cutoff_ms, max_rows, now_ms).await)
    }

    /// Every document of `spec`'s live table, by key (tests, the drift check).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn all_docs(&self, spec: &ProjectorSpec) -> Result<Vec<DocRow>, StoreError> {
        dispatch!(self, s => s.all_docs(spec).await)
    }

    /// Every stream row of `topic` from `after` on (tests, fixtures).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn all_rows(&self, topic: &str, after: u64) -> Result<Vec<StreamRow>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = match self
                .read_stream(topic, cursor, 5_000, &OwnerFilter::Any)
                .await
            {
                Ok(page) => page,
                Err(ReadError::Store(e)) => return Err(e),
                Err(ReadError::Stale { state, .. }) => {
                    cursor = state.retention_floor;
                    continue;
                }
                Err(ReadError::UnknownTopic(t)) => return Err(StoreError::Corrupt(t)),
            };
            let Some(last) = page.last() else {
                return Ok(out);
            };
            cursor = last.watermark;
            out.extend(page);
        }
    }
}

//! The per-topic tailer: reads new stream rows once per node (woken by head notifications plus a
//! fallback poll), keeps a bounded window of recent rows, and pushes each row into the feeds of
//! the principals that own it, waking only their sessions.
//!
//! Invariants (what sessions rely on):
//! - `tail` is stored (Release) under the state write lock *after* the rows up to it were pushed
//!   into the window and into every matching feed. A session that loads `tail` (Acquire) and then
//!   reads a feed therefore finds every matching row `<= tail` there, unless trimmed.
//! - The window holds every row in `(trimmed_through, tail]`, contiguous; a feed holds every row of
//!   its principal in `(feed.trimmed_through, tail]`. Cursors below either bound are served from
//!   the source instead (replay), where staleness is checked.
//! - Lock order: tailer state, then a feed. Sessions take one lock at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use engine::backoff::Backoff;
use engine::notify::CommitStamps;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::PreparedRow;
use crate::auth::Principal;
use crate::config::GatewayConfig;
use crate::source::{OwnerFilter, SourceError, SyncSource};

/// Rows of one principal on one topic, and the sessions waiting for them.
/// Recent rows, oldest first, with the bytes their JSON holds: windows and feeds are bounded by
/// both row count and bytes (a topic of large documents must not hold `window_rows` of them).
#[derive(Default)]
struct Rows {
    rows: VecDeque<Arc<PreparedRow>>,
    bytes: usize,
}

impl Rows {
    fn push_back(&mut self, row: Arc<PreparedRow>) {
        self.bytes += row.json.len();
        self.rows.push_back(row);
    }

    fn pop_front(&mut self) -> Option<Arc<PreparedRow>> {
        let row = self.rows.pop_front()?;
        self.bytes -= row.json.len();
        Some(row)
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }

    /// Drops the oldest rows while more than `max_rows` or more than `max_bytes` are held
    /// (always keeping the newest row); returns the watermark of the last row dropped.
    fn trim(&mut self, max_rows: usize, max_bytes: usize) -> Option<u64> {
        let mut dropped = None;
        while self.rows.len() > max_rows || (self.bytes > max_bytes && self.rows.len() > 1) {
            dropped = self.pop_front().map(|r| r.watermark);
        }
        dropped
    }
}

impl std::ops::Deref for Rows {
    type Target = VecDeque<Arc<PreparedRow>>;

    fn deref(&self) -> &Self::Target {
        &self.rows
    }
}

pub struct Feed {
    principal: Principal,
    filter: OwnerFilter,
    /// std Mutex: pushes and copies of `Arc`s only, never held across an await.
    inner: Mutex<FeedInner>,
}

struct FeedInner {
    rows: Rows,
    /// The feed holds every matching row with watermark in `(trimmed_through, tail]`.
    trimmed_through: u64,
    /// Sessions to wake when rows arrive: `(session id, its wake-up)`. Added by
    /// [`Tailer::attach`], removed when the [`FeedHandle`] drops.
    waiters: Vec<(u64, Arc<Notify>)>,
}

impl Feed {
    pub fn filter(&self) -> &OwnerFilter {
        &self.filter
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedInner> {
        self.inner.lock().expect("feed lock poisoned")
    }
}

/// A session's registration on a feed; dropping it unregisters the session (and drops the feed
/// when it was the last one).
pub struct FeedHandle {
    tailer: Arc<Tailer>,
    feed: Arc<Feed>,
    session: u64,
}

impl FeedHandle {
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn tailer(&self) -> &Arc<Tailer> {
        &self.tailer
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.tailer.release(&self.feed, self.session);
    }
}

/// What [`Tailer::pull`] found.
#[derive(Debug)]
pub enum Pulled {
    /// Rows after the cursor (at most `limit`), and the cursor to move to once all of them are
    /// delivered (possibly past the last row: nothing else of this principal is in between).
    Rows {
        rows: Vec<Arc<PreparedRow>>,
        cursor: u64,
    },
    /// The cursor is older than what memory holds: read the source.
    NeedStore,
}

struct TailState {
    /// Every row in `(trimmed_through, tail]`, contiguous.
    window: Rows,
    trimmed_through: u64,
    epoch: u64,
    feeds: HashMap<Principal, Arc<Feed>>,
    /// Feed index: which principals to look at for a row's owner user / guest scope.
    by_user: HashMap<String, Vec<Principal>>,
    by_guest: HashMap<String, Vec<Principal>>,
    /// Operator principals (owner filter `Any`): candidates for every owned row.
    operators: Vec<Principal>,
}

/// One topic's tailer. Shared (`Arc`) by the gateway and every session subscribed to the topic.
pub struct Tailer {
    topic: String,
    max_update_bytes: usize,
    window_rows: usize,
    window_bytes: usize,
    feed_rows: usize,
    feed_bytes: usize,
    read_batch: usize,
    tail: AtomicU64,
    /// False until the first read of the topic's state; until then sessions use the source.
    ready: AtomicBool,
    /// std RwLock: in-memory pushes and scans only, never held across an await.
    state: RwLock<TailState>,
}

/// Every waiting session's wake-up (lock order: the caller holds the tailer state).
fn all_waiters(state: &TailState) -> Vec<Arc<Notify>> {
    let mut wake = Vec::new();
    for feed in state.feeds.values() {
        wake.extend(feed.lock().waiters.iter().map(|(_, n)| n.clone()));
    }
    wake
}

fn index_add(index: &mut HashMap<String, Vec<Principal>>, key: &Option<String>, p: &Principal) {
    if let Some(key) = key {
        index.entry(key.clone()).or_default().push(p.clone());
    }
}

fn index_remove(index: &mut HashMap<String, Vec<Principal>>, key: &Option<String>, p: &Principal) {
    if let Some(key) = key {
        if let Some(list) = index.get_mut(key) {
            list.retain(|q| q != p);
            if list.is_empty() {
                index.remove(key);
            }
        }
    }
}

impl Tailer {
    pub fn new(topic: &str, config: &GatewayConfig) -> Arc<Self> {
        Arc::new(Self {
            topic: topic.to_owned(),
            max_update_bytes: config.max_update_bytes,
            window_rows: config.window_rows.max(1),
            window_bytes: config.window_bytes,
            feed_rows: config.feed_rows.max(1),
            feed_bytes: config.feed_bytes,
            read_batch: config.tailer_read_batch.max(1),
            tail: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            state: RwLock::new(TailState {
                window: Rows::default(),
                trimmed_through: u64::MAX,
                epoch: 0,
                feeds: HashMap::new(),
                by_user: HashMap::new(),
                by_guest: HashMap::new(),
                operators: Vec::new(),
            }),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The last watermark this node has read (0 before the first read).
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Number of live feeds (distinct principals with sessions on this topic).
    pub fn feed_count(&self) -> usize {
        self.read().feeds.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TailState> {
        self.state.read().expect("tailer lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TailState> {
        self.state.write().expect("tailer lock poisoned")
    }

    /// Registers `session` for `principal`'s rows; `wake` is notified when rows arrive.
    pub fn attach(
        self: &Arc<Self>,
        principal: &Principal,
        session: u64,
        wake: Arc<Notify>,
    ) -> FeedHandle {
        let mut state = self.write();
        let trimmed = if self.is_ready() {
            self.tail()
        } else {
            u64::MAX
        };
        let feed = match state.feeds.get(principal) {
            Some(feed) => feed.clone(),
            None => {
                let feed = Arc::new(Feed {
                    principal: principal.clone(),
                    filter: principal.owner_filter(),
                    inner: Mutex::new(FeedInner {
                        rows: Rows::default(),
                        trimmed_through: trimmed,
                        waiters: Vec::new(),
                    }),
                });
                state.feeds.insert(principal.clone(), feed.clone());
                index_add(&mut state.by_user, &principal.user_id, principal);
                index_add(&mut state.by_guest, &principal.guest_scope, principal);
                if principal.operator {
                    state.operators.push(principal.clone());
                }
                feed
            }
        };
        feed.lock().waiters.push((session, wake));
        FeedHandle {
            tailer: self.clone(),
            feed,
            session,
        }
    }

    fn release(&self, feed: &Arc<Feed>, session: u64) {
        let mut state = self.write();
        let empty = {
            let mut inner = feed.lock();
            inner.waiters.retain(|(id, _)| *id != session);
            inner.waiters.is_empty()
        };
        if empty
            && state
                .feeds
                .get(&feed.principal)
                .is_some_and(|f| Arc::ptr_eq(f, feed))
        {
            state.feeds.remove(&feed.principal);
            index_remove(&mut state.by_user, &feed.principal.user_id, &feed.principal);
            index_remove(
                &mut state.by_guest,
                &feed.principal.guest_scope,
                &feed.principal,
            );
            state.operators.retain(|p| p != &feed.principal);
        }
    }

    /// Rows of `feed`'s principal after `cursor`, from memory if memory covers the cursor.
    pub fn pull(&self, feed: &Feed, cursor: u64, limit: usize) -> Pulled {
        if !self.is_ready() {
            return Pulled::NeedStore;
        }
        let tail = self.tail();
        if cursor >= tail {
            return Pulled::Rows {
                rows: Vec::new(),
                cursor,
            };
        }
        let limit = limit.max(1);
        {
            let inner = feed.lock();
            if cursor >= inner.trimmed_through {
                let start = inner.rows.partition_point(|r| r.watermark <= cursor);
                let rows: Vec<Arc<PreparedRow>> =
                    inner.rows.range(start..).take(limit).cloned().collect();
                let last = rows.last().map_or(cursor, |r| r.watermark);
                let cursor = if rows.len() == limit {
                    last
                } else {
                    last.max(tail)
                };
                return Pulled::Rows { rows, cursor };
            }
        }
        let state = self.read();
        if cursor < state.trimmed_through {
            return Pulled::NeedStore;
        }
        let tail = self.tail();
        let start = usize::try_from(cursor - state.trimmed_through).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        let mut scanned = cursor;
        for row in state.window.range(start.min(state.window.len())..) {
            scanned = row.watermark;
            if feed.filter.matches(&row.owner) {
                rows.push(row.clone());
                if rows.len() == limit {
                    return Pulled::Rows {
                        rows,
                        cursor: scanned,
                    };
                }
            }
        }
        Pulled::Rows {
            rows,
            cursor: scanned.max(tail),
        }
    }

    /// Reads everything new from `source` into the window and the feeds, then wakes the
    /// sessions whose feeds grew.
    ///
    /// # Errors
    /// [`SourceError`] from the source; what was read before stays applied.
    pub async fn catch_up(&self, source: &dyn SyncSource) -> Result<(), SourceError> {
        let started = Instant::now();
        let state = source
            .topic_states(&[self.topic.as_str()])
            .await?
            .pop()
            .unwrap_or_default();
        // Sessions to wake because memory stopped vouching for their cursors (a new epoch):
        // they must re-read the source now and report `stale_cursor`, not at their next timer.
        let mut wake_all = Vec::new();
        {
            let mut st = self.write();
            if !self.is_ready() {
                st.epoch = state.epoch;
                st.trimmed_through = state.head_watermark;
                for feed in st.feeds.values() {
                    feed.lock().trimmed_through = state.head_watermark;
                }
                self.tail.store(state.head_watermark, Ordering::Release);
                self.ready.store(true, Ordering::Release);
            } else if state.epoch != st.epoch {
                // A rebuild: rows of the old epoch may no longer be served from memory, so
                // cursors before the new epoch go to the source and get `stale_cursor`.
                st.epoch = state.epoch;
                let through = state.epoch_start;
                while st.window.front().is_some_and(|r| r.watermark <= through) {
                    st.window.pop_front();
                }
                st.trimmed_through = st.trimmed_through.max(through);
                for feed in st.feeds.values() {
                    let mut inner = feed.lock();
                    while inner.rows.front().is_some_and(|r| r.watermark <= through) {
                        inner.rows.pop_front();
                    }
                    inner.trimmed_through = inner.trimmed_through.max(through);
                }
                if self.tail() < through {
                    self.tail.store(through, Ordering::Release);
                }
                wake_all = all_waiters(&st);
            }
        }
        for notify in wake_all {
            notify.notify_one();
        }
        loop {
            let after = self.tail();
            let rows = match source
                .read_stream(&self.topic, after, self.read_batch, &OwnerFilter::Any)
                .await
            {
                Ok(rows) => rows,
                Err(SourceError::Stale { state }) if state.retention_floor > after => {
                    // Pruned past this node's tail before it read them: memory can vouch for
                    // nothing up to the floor; carry on from there.
                    for notify in self.skip_to(state.retention_floor) {
                        notify.notify_one();
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let count = rows.len();
            if count == 0 {
                return Ok(());
            }
            let read_at = Instant::now();
            let prepared: Vec<Arc<PreparedRow>> = rows
                .iter()
                .map(|row| PreparedRow::prepare_read(row, self.max_update_bytes, Some(read_at)))
                .collect();
            let wake = self.apply(prepared);
            for notify in wake {
                notify.notify_one();
            }
            self.record_read(started, read_at);
            if count < self.read_batch {
                return Ok(());
            }
        }
    }

    /// Stage timings of a read that found rows (started at `started`, rows returned at
    /// `read_at`): the read itself, and each batch the local projector committed → read here.
    fn record_read(&self, started: Instant, read_at: Instant) {
        let topic = self.topic.clone();
        metrics::histogram!("runtime_sync_tail_read_seconds", "topic" => topic.clone())
            .record(read_at.duration_since(started).as_secs_f64());
        let stamps = CommitStamps::global().read_through(&self.topic, self.tail());
        if !stamps.is_empty() {
            let histogram =
                metrics::histogram!("runtime_sync_commit_to_tail_seconds", "topic" => topic);
            for committed in stamps {
                histogram.record(read_at.saturating_duration_since(committed).as_secs_f64());
            }
        }
    }

    /// Forgets everything up to `through` (a gap this node cannot fill) and continues after it;
    /// returns every session's wake-up (their cursors may now be stale).
    fn skip_to(&self, through: u64) -> Vec<Arc<Notify>> {
        let mut guard = self.write();
        let st = &mut *guard;
        if through <= self.tail() {
            return Vec::new();
        }
        st.window.clear();
        st.trimmed_through = through;
        for feed in st.feeds.values() {
            let mut inner = feed.lock();
            inner.rows.clear();
            inner.trimmed_through = through;
        }
        self.tail.store(through, Ordering::Release);
        all_waiters(st)
    }

    /// Appends prepared rows (ascending) and returns the wake-ups to fire.
    fn apply(&self, rows: Vec<Arc<PreparedRow>>) -> Vec<Arc<Notify>> {
        let mut st = self.write();
        let mut tail = self.tail();
        let mut dirty: Vec<Arc<Feed>> = Vec::new();
        let mut gap = false;
        for row in rows {
            if row.watermark <= tail {
                continue;
            }
            if row.watermark != tail + 1 {
                // A gap (pruned or dropped by a rebuild before this node read it): memory can
                // no longer vouch for anything up to here.
                let through = row.watermark - 1;
                st.window.clear();
                st.trimmed_through = through;
                for feed in st.feeds.values() {
                    let mut inner = feed.lock();
                    inner.rows.clear();
                    inner.trimmed_through = through;
                }
                gap = true;
            }
            tail = row.watermark;
            let mut candidates: Vec<&Principal> = Vec::new();
            if let Some(list) = row.owner.user_id.as_ref().and_then(|u| st.by_user.get(u)) {
                candidates.extend(list);
            }
            if let Some(list) = row
                .owner
                .guest_scope
                .as_ref()
                .and_then(|g| st.by_guest.get(g))
            {
                candidates.extend(list);
            }
            // Operators read every owned row (an ownerless row, such as an epoch marker, goes
            // to nobody).
            if row.owner.user_id.is_some() || row.owner.guest_scope.is_some() {
                candidates.extend(st.operators.iter());
            }
            for principal in candidates {
                let Some(feed) = st.feeds.get(principal) else {
                    continue;
                };
                if !feed.filter.matches(&row.owner) {
                    continue;
                }
                let mut inner = feed.lock();
                if inner
                    .rows
                    .back()
                    .is_some_and(|r| r.watermark == row.watermark)
                {
                    continue; // matched through both user and guest scope
                }
                inner.rows.push_back(row.clone());
                if let Some(through) = inner.rows.trim(self.feed_rows, self.feed_bytes) {
                    inner.trimmed_through = through;
                }
                if !dirty.iter().any(|f| Arc::ptr_eq(f, feed)) {
                    dirty.push(feed.clone());
                }
            }
            st.window.push_back(row);
            if let Some(through) = st.window.trim(self.window_rows, self.window_bytes) {
                st.trimmed_through = through;
            }
        }
        self.tail.store(tail, Ordering::Release);
        if gap {
            return all_waiters(&st);
        }
        drop(st);
        let mut wake = Vec::new();
        for feed in dirty {
            wake.extend(feed.lock().waiters.iter().map(|(_, n)| n.clone()));
        }
        wake
    }

    /// Tails the topic until `shutdown`: catches up, then waits for a head notification or the
    /// fallback poll. Source errors are logged and retried with backoff (up to the poll).
    ///
    /// On a replica (`--read-database-url`) a wake-up can arrive before the replica has
    /// replayed the commit it announces (NOTIFY comes from the primary). So each round first
    /// asks the primary for the topic's head, then reads the replica, and while the replica is
    /// behind that head it reads again after short pauses (2–50 ms) instead of waiting for the
    /// next notice: a wake-up is never lost, and nothing past what the replica shows is read.
    pub async fn run(
        self: Arc<Self>,
        source: Arc<dyn SyncSource>,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        let mut heads = source.subscribe_heads();
        let mut notifications = true;
        let mut lagging = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        let mut failing = Backoff::new(Duration::from_millis(50), poll.min(Duration::from_secs(1)));
        let mut failed = false;
        loop {
            heads.mark_unchanged();
            // Read before the replica: everything a wake-up announced is at or below it.
            let wanted = match source.primary_heads(&[self.topic.as_str()]).await {
                Ok(heads) => heads.and_then(|h| h.first().copied()),
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error.message = %e, "primary head unknown; polling the replica");
                    None
                }
            };
            let wait = match self.catch_up(source.as_ref()).await {
                Ok(()) => {
                    if failed {
                        tracing::info!(topic = %self.topic, tail = self.tail(), "tailer reads again");
                        failed = false;
                    }
                    failing.reset();
                    if let Some(head) = wanted {
                        // On a replica: how far the rows this node reads trail the primary.
                        metrics::gauge!("runtime_sync_replica_lag_watermarks", "topic" => self.topic.clone())
                            .set(head.saturating_sub(self.tail()) as f64);
                    }
                    if wanted.is_some_and(|w| self.tail() < w) {
                        lagging.next_delay()
                    } else {
                        lagging.reset();
                        poll
                    }
                }
                Err(e) => {
                    if !failed {
                        tracing::warn!(topic = %self.topic, error.message = %e, error.cause_chain = ?e, "tailer read failed; retrying");
                        failed = true;
                    }
                    failing.next_delay()
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = heads.changed(), if notifications => {
                    if changed.is_err() {
                        notifications = false; // the notifier is gone; poll only
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{DocOwner, MemorySource};
    use serde_json::json;

    fn user(id: &str) -> Principal {
        Principal {
            user_id: Some(id.into()),
            ..Principal::default()
        }
    }

    fn rows(pulled: &Pulled) -> (Vec<u64>, u64) {
        match pulled {
            Pulled::Rows { rows, cursor } => (rows.iter().map(|r| r.watermark).collect(), *cursor),
            Pulled::NeedStore => panic!("expected rows"),
        }
    }

    #[tokio::test]
    async fn rows_reach_only_the_owners_feed_and_wake_only_its_sessions() {
        let source = MemorySource::new();
        source.append("t", "a0", json!({}), DocOwner::user("alice"));
        let tailer = Tailer::new("t", &GatewayConfig::default());
        tailer.catch_up(&source).await.unwrap();
        assert_eq!(tailer.tail(), 1, "starts at the head, not at the beginning");

        let alice_wake = Arc::new(Notify::new());
        let bob_wake = Arc::new(Notify::new());
        let alice = tailer.attach(&user("alice"), 1, alice_wake.clone());
        let bob = tailer.attach(&user("bob"), 2, bob_wake.clone());
        let alice2 = tailer.attach(&user("alice"), 3, Arc::new(Notify::new()));
        assert_eq!(tailer.feed_count(), 2);

        source.append("t", "a1", json!({}), DocOwner::user("alice"));
        source.append("t", "b1", json!({}), DocOwner::user("bob"));
        source.append("t", "a2", json!({}), DocOwner::user("alice"));
        tailer.catch_up(&source).await.unwrap();

        // Alice was woken (a stored permit), Bob too; each sees only their rows.
        tokio::time::timeout(Duration::from_secs(1), alice_wake.notified())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), bob_wake.notified())
            .await
            .unwrap();
        assert_eq!(rows(&tailer.pull(alice.feed(), 1, 10)), (vec![2, 4], 4));
        assert_eq!(rows(&tailer.pull(bob.feed(), 1, 10)), (vec![3], 4));
        assert_eq!(rows(&tailer.pull(alice2.feed(), 2, 1)), (vec![4], 4));
        assert_eq!(rows(&tailer.pull(alice.feed(), 1, 1)), (vec![2], 2));

        // A cursor older than the feed's start is served from the window (filtered)...
        drop(bob);
        let bob = tailer.attach(&user("bob"), 4, Arc::new(Notify::new()));
        assert_eq!(rows(&tailer.pull(bob.feed(), 1, 10)), (vec![3], 4));
        // ...and one older than the window needs the source.
        assert!(matches!(tailer.pull(bob.feed(), 0, 10), Pulled::NeedStore));
        drop((alice, alice2, bob));
        assert_eq!(tailer.feed_count(), 0);
    }

    #[tokio::test]
    async fn an_operator_feed_gets_every_owned_row_once_and_no_ownerless_row() {
        let source = MemorySource::new();
        let tailer = Tailer::new("t", &GatewayConfig::default());
        tailer.catch_up(&source).await.unwrap();
        let wake = Arc::new(Notify::new());
        let operator = Principal {
            user_id: Some("alice".into()),
            operator: true,
            ..Principal::default()
        };
        let op = tailer.attach(&operator, 1, wake.clone());
        source.append("t", "a1", json!({}), DocOwner::user("alice"));
        source.append("t", "b1", json!({}), DocOwner::user("bob"));
        source.append("t", "marker", json!({}), DocOwner::default());
        source.append(
            "t",
            "g1",
            json!({}),
            DocOwner {
                guest_scope: Some("g".into()),
                ..DocOwner::default()
            },
        );
        tailer.catch_up(&source).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), wake.notified())
            .await
            .unwrap();
        // Alice's row once (indexed both as alice and as an operator), bob's and the guest's;
        // not the ownerless row.
        assert_eq!(rows(&tailer.pull(op.feed(), 0, 10)), (vec![1, 2, 4], 4));
        drop(op);
        assert_eq!(tailer.feed_count(), 0);
        assert!(tailer.read().operators.is_empty());
    }

    #[tokio::test]
    async fn bounded_feeds_and_windows_fall_back_to_the_source() {
        let config = GatewayConfig {
            window_rows: 4,
            feed_rows: 2,
            ..GatewayConfig::default()
        };
        let source = MemorySource::new();
        let tailer = Tailer::new("t", &config);
        tailer.catch_up(&source).await.unwrap();
        let alice = tailer.attach(&user("alice"), 1, Arc::new(Notify::new()));
        for i in 0..6 {
            let owner = if i % 2 == 0 { "alice" } else { "bob" };
            source.append("t", &format!("d{i}"), json!({}), DocOwner::user(owner));
        }
        tailer.catch_up(&source).await.unwrap();
        // Feed keeps alice's last 2 rows (3, 5): covers cursors >= 1.
        assert_eq!(rows(&tailer.pull(alice.feed(), 1, 10)), (vec![3, 5], 6));
        // Window keeps rows 3..=6: cursor 0 needs the source.
        assert!(matches!(
            tailer.pull(alice.feed(), 0, 10),
            Pulled::NeedStore
        ));
    }

    #[tokio::test]
    async fn windows_and_feeds_are_bounded_by_bytes_as_well_as_rows() {
        let config = GatewayConfig {
            window_bytes: 3 * 1024,
            feed_bytes: 2 * 1024,
            ..GatewayConfig::default()
        };
        let source = MemorySource::new();
        let tailer = Tailer::new("t", &config);
        tailer.catch_up(&source).await.unwrap();
        let alice = tailer.attach(&user("alice"), 1, Arc::new(Notify::new()));
        let big = "x".repeat(900);
        for i in 0..10 {
            source.append(
                "t",
                &format!("d{i}"),
                json!({ "blob": big }),
                DocOwner::user("alice"),
            );
        }
        tailer.catch_up(&source).await.unwrap();
        {
            let state = tailer.read();
            assert!(state.window.bytes <= 3 * 1024, "{}", state.window.bytes);
            // Each row's JSON is ~1.1 KiB: two fit, far below window_rows.
            assert_eq!(state.window.len(), 2, "bounded by bytes");
            assert_eq!(state.trimmed_through, 8);
            let feed = alice.feed().lock();
            assert!(feed.rows.bytes <= 2 * 1024, "{}", feed.rows.bytes);
            assert_eq!(feed.rows.len(), 1);
        }
        // What memory no longer holds, the source serves.
        assert_eq!(rows(&tailer.pull(alice.feed(), 8, 10)), (vec![9, 10], 10));
        assert!(matches!(
            tailer.pull(alice.feed(), 5, 10),
            Pulled::NeedStore
        ));
    }

    #[tokio::test]
    async fn rows_pruned_before_this_node_read_them_are_skipped_not_retried_forever() {
        let source = MemorySource::new();
        let tailer = Tailer::new("t", &GatewayConfig::default());
        tailer.catch_up(&source).await.unwrap();
        let alice = tailer.attach(&user("alice"), 1, Arc::new(Notify::new()));
        for i in 0..5 {
            source.append("t", &format!("d{i}"), json!({}), DocOwner::user("alice"));
        }
        source.prune_through("t", 3);
        tailer.catch_up(&source).await.unwrap();
        assert_eq!(tailer.tail(), 5);
        assert!(matches!(
            tailer.pull(alice.feed(), 2, 10),
            Pulled::NeedStore
        ));
        assert_eq!(rows(&tailer.pull(alice.feed(), 3, 10)), (vec![4, 5], 5));
    }

    #[tokio::test]
    async fn a_rebuild_forces_older_cursors_back_to_the_source_and_wakes_every_session() {
        let source = MemorySource::new();
        let tailer = Tailer::new("t", &GatewayConfig::default());
        tailer.catch_up(&source).await.unwrap();
        let alice_wake = Arc::new(Notify::new());
        let bob_wake = Arc::new(Notify::new());
        let alice = tailer.attach(&user("alice"), 1, alice_wake.clone());
        let _bob = tailer.attach(&user("bob"), 2, bob_wake.clone());
        source.append("t", "a", json!({}), DocOwner::user("alice"));
        source.append("t", "b", json!({}), DocOwner::user("alice"));
        tailer.catch_up(&source).await.unwrap();
        assert_eq!(rows(&tailer.pull(alice.feed(), 0, 10)), (vec![1, 2], 2));
        tokio::time::timeout(Duration::from_secs(1), alice_wake.notified())
            .await
            .unwrap();
        // The rebuild's marker takes watermark 3: the old head (2) is a cursor of the old epoch.
        source.rebuild("t");
        tailer.catch_up(&source).await.unwrap();
        assert_eq!(tailer.tail(), 3);
        for cursor in [1, 2] {
            assert!(matches!(
                tailer.pull(alice.feed(), cursor, 10),
                Pulled::NeedStore
            ));
        }
        // Both sessions are woken, bob's too though nothing of his arrived: their cursors may
        // be stale now and they must find out without waiting for a timer.
        for wake in [&alice_wake, &bob_wake] {
            tokio::time::timeout(Duration::from_secs(1), wake.notified())
                .await
                .unwrap();
        }
        assert_eq!(rows(&tailer.pull(alice.feed(), 3, 10)), (vec![], 3));
        source.append("t", "c", json!({}), DocOwner::user("alice"));
        tailer.catch_up(&source).await.unwrap();
        assert_eq!(rows(&tailer.pull(alice.feed(), 3, 10)), (vec![4], 4));
    }

    #[tokio::test]
    async fn rows_pruned_before_this_node_read_them_wake_every_session() {
        let source = MemorySource::new();
        let tailer = Tailer::new("t", &GatewayConfig::default());
        tailer.catch_up(&source).await.unwrap();
        let bob_wake = Arc::new(Notify::new());
        let bob = tailer.attach(&user("bob"), 2, bob_wake.clone());
        source.append("t", "a", json!({}), DocOwner::user("alice"));
        tailer.catch_up(&source).await.unwrap();
        for i in 0..3 {
            source.append("t", &format!("b{i}"), json!({}), DocOwner::user("alice"));
        }
        source.prune_through("t", 3);
        tailer.catch_up(&source).await.unwrap();
        assert_eq!(tailer.tail(), 4);
        // Nothing of bob's arrived, but a cursor of his below the floor is stale now.
        tokio::time::timeout(Duration::from_secs(1), bob_wake.notified())
            .await
            .unwrap();
        assert!(matches!(tailer.pull(bob.feed(), 1, 10), Pulled::NeedStore));
    }
}

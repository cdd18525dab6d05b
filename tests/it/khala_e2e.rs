//! Khala over the real pipeline: commands sent over HTTP into the real app with its sync lane
//! (engine → journal → projectors → store → gateway), observed over real WebSockets with
//! [`KhalaClient`] and the official Phoenix JS client, on PostgreSQL and SQLite.
//!
//! Every delivery check compares what a client received with the store's own stream rows for
//! that principal (`SyncStore::all_rows` filtered by the principal's owner rule): the same
//! watermarks in the same order, nothing missed, nothing twice. Waits are bounded polls with
//! generous deadlines: on PostgreSQL the journal's read horizon holds projection back while any
//! transaction of the (shared, parallel) test cluster is open.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use engine::testing::TestDb;
use projectors::store::{HydratePage, StreamRow};
use projectors::OwnerFilter;
use serde_json::{json, Value};
use sync_gateway::auth::mint::{mint, MintRequest};
use sync_gateway::client::{compat_params, socket_url, ClientError, KhalaClient, Push};
use sync_gateway::http::{HydrateResponse, HydratedDoc};
use sync_gateway::protocol::{ErrorCode, SyncError, Update, UpdateBatch};
use sync_gateway::test_utils::{now_secs, sign_claims};
use tokio_tungstenite::tungstenite::Message;

use crate::app::{spawn_app_with, spawn_app_with_sync, sync_settings, Options, Req, TestApp};
use crate::support::on_both_backends;

pub(crate) const RUNS: &str = "runtime.run_summaries";
pub(crate) const WORKERS: &str = "runtime.codex_worker_summaries";
pub(crate) const EVENTS: &str = "runtime.codex_worker_events";
pub(crate) const RUN_METADATA: &str = "runtime.run_metadata";
const THREAD: &str = "thread_1";
/// How long any one wait may take (projection can lag by seconds under parallel test load).
pub(crate) const WAIT: Duration = Duration::from_secs(60);

on_both_backends!(
    hydration_then_subscribe_from_its_watermark_misses_nothing_and_repeats_nothing,
    replay_switches_to_live_without_gap_or_duplicate_while_commands_commit,
    a_client_reconnects_and_resumes_from_its_persisted_watermark,
    users_guests_and_orgs_on_one_topic_never_see_each_others_docs,
    a_cursor_below_the_retention_floor_is_stale_and_rehydration_recovers,
    a_rebuild_epoch_makes_live_cursors_stale_and_rehydration_recovers,
    worker_summaries_and_events_follow_a_workers_lifecycle,
    bad_and_expired_tokens_forbidden_topics_and_revoked_sessions_are_refused,
    garbage_and_oversized_frames_on_the_real_server,
    a_slow_consumer_is_disconnected_while_others_keep_receiving,
    hydration_reads_in_pages_at_the_first_pages_watermark,
    large_metadata_is_sent_once_not_with_every_summary_change,
);

// ---- principals and commands ---------------------------------------------------------------

/// A principal: who sends commands (signature headers and claims) and who reads (sync token).
#[derive(Clone, Debug)]
pub(crate) struct Who {
    pub user: Option<&'static str>,
    pub guest: Option<&'static str>,
    pub org: Option<&'static str>,
}

impl Who {
    pub(crate) fn user(id: &'static str) -> Self {
        Self {
            user: Some(id),
            guest: None,
            org: None,
        }
    }

    fn guest(scope: &'static str) -> Self {
        Self {
            user: None,
            guest: Some(scope),
            org: None,
        }
    }

    fn in_org(mut self, org: &'static str) -> Self {
        self.org = Some(org);
        self
    }

    fn subject(&self) -> String {
        match (self.user, self.guest) {
            (Some(user), _) => format!("user:{user}"),
            (None, Some(guest)) => format!("guest:{guest}"),
            (None, None) => unreachable!("a principal has a user or a guest scope"),
        }
    }

    /// The owner rule the store applies for this principal's sync token.
    pub(crate) fn filter(&self) -> OwnerFilter {
        OwnerFilter::Principal {
            user_id: self.user.map(str::to_owned),
            guest_scope: self.guest.map(str::to_owned),
            org_id: self.org.map(str::to_owned),
        }
    }

    /// `request` acting as this principal.
    fn on<'a>(&self, request: Req<'a>) -> Req<'a> {
        let request = match (self.user, self.guest) {
            (Some(user), _) => request.user(user),
            (None, Some(guest)) => request.guest(guest),
            (None, None) => request,
        };
        match self.org {
            Some(org) => request.claims(|c| c.oa_org_id = Some(org.to_owned())),
            None => request,
        }
    }
}

async fn send(app: &TestApp, who: &Who, path: &str, body: Value) -> Value {
    let response = who.on(app.post(path, body)).send().await;
    assert!(
        (200..300).contains(&response.status),
        "{path} as {who:?}: {} {}",
        response.status,
        response.text
    );
    response.json
}

async fn create_run(app: &TestApp, who: &Who, run: &str) {
    send(
        app,
        who,
        "/internal/v1/runs",
        json!({"run_id": run, "thread_id": THREAD}),
    )
    .await;
}

async fn create_run_with(app: &TestApp, who: &Who, run: &str, metadata: Value) {
    send(
        app,
        who,
        "/internal/v1/runs",
        json!({"run_id": run, "thread_id": THREAD, "metadata": metadata}),
    )
    .await;
}

async fn start_run(app: &TestApp, who: &Who, run: &str) {
    send(
        app,
        who,
        &format!("/internal/v1/runs/{run}/start"),
        json!({"thread_id": THREAD}),
    )
    .await;
}

async fn running(app: &TestApp, who: &Who, run: &str) {
    create_run(app, who, run).await;
    start_run(app, who, run).await;
}

async fn delta(app: &TestApp, who: &Who, run: &str, frame: &str) {
    send(
        app,
        who,
        &format!("/internal/v1/runs/{run}/frames"),
        json!({"thread_id": THREAD, "frame_id": frame, "type": "text_delta", "payload": {"delta": frame}}),
    )
    .await;
}

async fn finish_run(app: &TestApp, who: &Who, run: &str) {
    send(
        app,
        who,
        &format!("/internal/v1/runs/{run}/finish"),
        json!({"thread_id": THREAD, "status": "succeeded"}),
    )
    .await;
}

pub(crate) fn run_key(run: &str) -> String {
    projectors::run_summary::doc_key(run)
}

// ---- the sync lane -------------------------------------------------------------------------

fn lane(app: &TestApp) -> &openagents_runtime::sync::SyncLane {
    app.sync.as_ref().expect("the app runs the sync lane")
}

/// A sync token for `who` with `scopes`, signed with the lane's key.
fn sync_token(app: &TestApp, who: &Who, scopes: &[&str]) -> String {
    sync_token_with(app, who, scopes, None)
}

fn sync_token_with(app: &TestApp, who: &Who, scopes: &[&str], session: Option<&str>) -> String {
    let gateway = &lane(app).gateway;
    mint(
        gateway.verifier().config(),
        gateway.known_topics(),
        &MintRequest {
            subject: who.subject(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            org_id: who.org.map(str::to_owned),
            session_id: session.map(str::to_owned),
            ..MintRequest::default()
        },
        now_secs(),
    )
    .expect("test sync token mints")
    .token
}

pub(crate) async fn connect(base: &str, token: &str) -> Result<KhalaClient, ClientError> {
    let mut client = KhalaClient::connect(&socket_url(base, token, &compat_params())).await?;
    client.set_timeout(WAIT);
    Ok(client)
}

pub(crate) async fn joined(base: &str, token: &str) -> KhalaClient {
    let mut client = connect(base, token).await.expect("socket upgrade");
    client
        .join(json!({}))
        .await
        .expect("join transport")
        .expect("join accepted");
    client
}

pub(crate) async fn hydrate(base: &str, token: &str, topic: &str) -> HydrateResponse {
    let response = reqwest::Client::new()
        .get(format!("{base}/sync/v1/topics/{topic}/docs"))
        .bearer_auth(token)
        .send()
        .await
        .expect("hydration request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("hydration body");
    assert_eq!(status, 200, "hydration of {topic}: {text}");
    serde_json::from_str(&text).expect("hydration response")
}

/// Polls `probe` until it returns `Some`, for at most [`WAIT`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The run's summary document in the store once it reflects every event the journal holds
/// for the run (the run snapshot's `latest_seq`); returns its payload.
async fn settled_run(app: &TestApp, who: &Who, run: &str) -> Value {
    let snapshot = who
        .on(app.get(&format!(
            "/internal/v1/runs/{run}/snapshot?thread_id={THREAD}"
        )))
        .send()
        .await;
    assert_eq!(snapshot.status, 200, "{}", snapshot.text);
    let seq = snapshot.json["latest_seq"].as_u64().expect("latest_seq");
    let store = lane(app).store.clone();
    let key = run_key(run);
    eventually(&format!("{run} projected through seq {seq}"), || {
        let (store, key) = (store.clone(), key.clone());
        async move {
            let hydration = store
                .hydrate(RUNS, Some(&key), HydratePage::ALL, &OwnerFilter::Any)
                .await
                .expect("store hydration");
            let doc = hydration.docs.into_iter().next()?;
            let payload: Value = serde_json::from_str(&doc.payload).expect("stored payload");
            (payload["latest_seq"].as_u64() == Some(seq)).then_some(payload)
        }
    })
    .await
}

/// The store's stream rows of `topic` after `after` that `who` may read.
pub(crate) async fn owned_rows(
    store: &projectors::SyncStore,
    topic: &str,
    after: u64,
    who: &Who,
) -> Vec<StreamRow> {
    let filter = who.filter();
    store
        .all_rows(topic, after)
        .await
        .expect("store rows")
        .into_iter()
        .filter(|r| filter.matches(&r.owner))
        .collect()
}

// ---- receiving -----------------------------------------------------------------------------

/// Receives batches until `done(all updates so far)`; heartbeats are skipped, any other push
/// fails the test.
pub(crate) async fn batches_until(
    client: &mut KhalaClient,
    what: &str,
    mut done: impl FnMut(&[Update]) -> bool,
) -> Vec<UpdateBatch> {
    let mut batches: Vec<UpdateBatch> = Vec::new();
    let mut updates: Vec<Update> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !done(&updates) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let push = match tokio::time::timeout(remaining, client.next_push()).await {
            Ok(Ok(push)) => push,
            Ok(Err(e)) => panic!(
                "waiting for {what}: {e} after {} updates ({:?})",
                updates.len(),
                watermarks(&updates)
            ),
            Err(_) => panic!(
                "timed out waiting for {what} after {} updates ({:?})",
                updates.len(),
                watermarks(&updates)
            ),
        };
        match push {
            Push::Batch { batch, .. } => {
                updates.extend(batch.updates.iter().cloned());
                batches.push(batch);
            }
            Push::Heartbeat(_) => {}
            other => panic!("waiting for {what}: unexpected {other:?}"),
        }
    }
    batches
}

pub(crate) async fn updates_until(
    client: &mut KhalaClient,
    what: &str,
    done: impl FnMut(&[Update]) -> bool,
) -> Vec<Update> {
    batches_until(client, what, done)
        .await
        .into_iter()
        .flat_map(|b| b.updates)
        .collect()
}

/// The next push that is not a batch or heartbeat, within [`WAIT`]; batches must be empty.
async fn next_error(client: &mut KhalaClient) -> SyncError {
    loop {
        match client.next_push().await.expect("push") {
            Push::Batch { batch, .. } => assert!(
                batch.updates.is_empty(),
                "expected an error push, got updates {:?}",
                watermarks(&batch.updates)
            ),
            Push::Heartbeat(_) => {}
            Push::Error(e) => return e,
            other => panic!("expected an error push, got {other:?}"),
        }
    }
}

pub(crate) fn watermarks(updates: &[Update]) -> Vec<u64> {
    updates.iter().map(|u| u.watermark).collect()
}

/// True once every run in `runs` has an update with status `succeeded`.
pub(crate) fn finished(updates: &[Update], runs: &[&str]) -> bool {
    runs.iter().all(|run| {
        let key = run_key(run);
        updates.iter().any(|u| {
            u.doc_key == key
                && u.payload
                    .as_ref()
                    .is_some_and(|p| p["status"] == "succeeded")
        })
    })
}

/// `received` is exactly `truth`: the same rows, in order, each once.
#[track_caller]
pub(crate) fn assert_delivered_exactly(received: &[Update], truth: &[StreamRow]) {
    let got: Vec<(u64, &str, u64)> = received
        .iter()
        .map(|u| (u.watermark, u.doc_key.as_str(), u.doc_version))
        .collect();
    let want: Vec<(u64, &str, u64)> = truth
        .iter()
        .map(|r| (r.watermark, r.doc_key.as_str(), r.doc_version))
        .collect();
    assert_eq!(got, want, "delivered rows differ from the store's rows");
    for (update, row) in received.iter().zip(truth) {
        assert_eq!(update.payload_hash, row.payload_hash, "{}", row.doc_key);
        let payload: Value = serde_json::from_str(&row.payload).expect("stored payload");
        assert_eq!(update.payload.as_ref(), Some(&payload), "{}", row.doc_key);
        assert!(!update.hydration_required);
    }
}

/// Each doc's versions continue from its hydrated version (or 1) in steps of one.
#[track_caller]
pub(crate) fn assert_versions_continue(hydrated: &[HydratedDoc], updates: &[Update]) {
    let mut versions: HashMap<&str, u64> = hydrated
        .iter()
        .map(|d| (d.doc_key.as_str(), d.doc_version))
        .collect();
    for update in updates {
        let expected = versions.get(update.doc_key.as_str()).map_or(1, |v| v + 1);
        assert_eq!(
            update.doc_version, expected,
            "{} at watermark {}",
            update.doc_key, update.watermark
        );
        versions.insert(update.doc_key.as_str(), update.doc_version);
    }
}

/// Every delivered or hydrated payload belongs to `who`.
#[track_caller]
fn assert_owned_by(payloads: impl IntoIterator<Item = Value>, who: &Who) {
    for payload in payloads {
        assert_eq!(
            payload["owner_user_id"].as_str(),
            who.user,
            "owner of {payload}"
        );
        assert_eq!(
            payload["owner_guest_scope"].as_str(),
            who.guest,
            "guest scope of {payload}"
        );
        assert_eq!(payload["org_id"].as_str(), who.org, "org of {payload}");
    }
}

// ---- tests ---------------------------------------------------------------------------------

async fn hydration_then_subscribe_from_its_watermark_misses_nothing_and_repeats_nothing(
    db: &TestDb,
) {
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    // History before the hydration: alice's two runs and bob's, interleaved.
    for (who, run) in [(&alice, "h_a1"), (&bob, "h_b1"), (&alice, "h_a2")] {
        running(&app, who, run).await;
    }
    for i in 0..3 {
        delta(&app, &alice, "h_a1", &format!("a1_{i}")).await;
        delta(&app, &bob, "h_b1", &format!("b1_{i}")).await;
        delta(&app, &alice, "h_a2", &format!("a2_{i}")).await;
    }
    settled_run(&app, &alice, "h_a1").await;
    settled_run(&app, &alice, "h_a2").await;

    let token = sync_token(&app, &alice, &[RUNS]);
    let hydration = hydrate(&app.base, &token, RUNS).await;
    let keys: Vec<&str> = hydration.docs.iter().map(|d| d.doc_key.as_str()).collect();
    assert_eq!(keys, [run_key("h_a1"), run_key("h_a2")]);
    for doc in &hydration.docs {
        assert!(doc.watermark <= hydration.watermark, "{doc:?}");
        assert_eq!(
            doc.payload_hash,
            aggregates::canonical::hash_canonical(&doc.payload)
        );
        // Created (seq 0), started, 3 frames: five versions.
        assert_eq!(
            (doc.doc_version, &doc.payload["latest_seq"]),
            (5, &json!(4))
        );
    }
    assert_owned_by(hydration.docs.iter().map(|d| d.payload.clone()), &alice);

    // Commands keep committing while the client connects and subscribes from the watermark.
    let writer = async {
        for i in 3..8 {
            delta(&app, &alice, "h_a1", &format!("a1_{i}")).await;
            delta(&app, &bob, "h_b1", &format!("b1_{i}")).await;
            delta(&app, &alice, "h_a2", &format!("a2_{i}")).await;
        }
        for (who, run) in [(&alice, "h_a1"), (&bob, "h_b1"), (&alice, "h_a2")] {
            finish_run(&app, who, run).await;
        }
    };
    let reader = async {
        let mut client = joined(&app.base, &token).await;
        let reply = client
            .subscribe_from(&[(RUNS, Some(hydration.watermark))])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.topics, [RUNS]);
        updates_until(&mut client, "alice's runs to finish", |u| {
            finished(u, &["h_a1", "h_a2"])
        })
        .await
    };
    let ((), updates) = tokio::join!(writer, reader);

    let store = &lane(&app).store;
    let truth = owned_rows(store, RUNS, hydration.watermark, &alice).await;
    assert_delivered_exactly(&updates, &truth);
    assert_versions_continue(&hydration.docs, &updates);
    assert_eq!(updates.len(), 2 * 6, "5 frames and a finish per run");
    assert_owned_by(updates.iter().filter_map(|u| u.payload.clone()), &alice);
    // Bob's rows advanced the topic's watermarks between alice's: her view has gaps exactly
    // where his rows are.
    let all = store.all_rows(RUNS, hydration.watermark).await.unwrap();
    let bobs = owned_rows(store, RUNS, hydration.watermark, &bob).await;
    assert_eq!(bobs.len(), 6);
    assert_eq!(all.len(), truth.len() + bobs.len());
}

async fn replay_switches_to_live_without_gap_or_duplicate_while_commands_commit(db: &TestDb) {
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    for (who, run) in [(&alice, "r_a1"), (&bob, "r_b1"), (&alice, "r_a2")] {
        running(&app, who, run).await;
    }
    for i in 0..15 {
        delta(&app, &alice, "r_a1", &format!("a1_{i}")).await;
        delta(&app, &bob, "r_b1", &format!("b1_{i}")).await;
        delta(&app, &alice, "r_a2", &format!("a2_{i}")).await;
    }
    settled_run(&app, &alice, "r_a1").await;
    settled_run(&app, &alice, "r_a2").await;

    let token = sync_token(&app, &alice, &[RUNS]);
    let mut client = joined(&app.base, &token).await;
    // From the beginning, five updates per batch: a replay of 34 rows while more commit.
    client
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 0}, "replay_batch_size": 5}))
        .await
        .unwrap()
        .unwrap();
    let writer = async {
        for i in 15..25 {
            delta(&app, &alice, "r_a1", &format!("a1_{i}")).await;
            delta(&app, &bob, "r_b1", &format!("b1_{i}")).await;
            delta(&app, &alice, "r_a2", &format!("a2_{i}")).await;
        }
        for (who, run) in [(&alice, "r_a1"), (&bob, "r_b1"), (&alice, "r_a2")] {
            finish_run(&app, who, run).await;
        }
    };
    let reader = batches_until(&mut client, "alice's runs to finish", |u| {
        finished(u, &["r_a1", "r_a2"])
    });
    let ((), batches) = tokio::join!(writer, reader);

    let mut completed = false;
    let mut incomplete = 0;
    for batch in &batches {
        assert!(batch.updates.len() <= 5, "replay_batch_size is honoured");
        if batch.replay_complete {
            completed = true;
        } else {
            assert!(!completed, "replay_complete never goes back to false");
            incomplete += 1;
        }
    }
    assert!(completed);
    assert!(
        incomplete >= 6,
        "34 replayed rows in batches of 5 ({incomplete} incomplete batches)"
    );
    let updates: Vec<Update> = batches.into_iter().flat_map(|b| b.updates).collect();
    let truth = owned_rows(&lane(&app).store, RUNS, 0, &alice).await;
    assert_delivered_exactly(&updates, &truth);
    assert_versions_continue(&[], &updates);
    assert_eq!(updates.len(), 2 * (2 + 25 + 1));
}

async fn a_client_reconnects_and_resumes_from_its_persisted_watermark(db: &TestDb) {
    use sync_gateway::cli::WatchState;
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    running(&app, &alice, "rc_a").await;
    running(&app, &bob, "rc_b").await;
    settled_run(&app, &alice, "rc_a").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("watermark.json");

    // First connection: subscribe from the head, receive three frames, persist the watermark.
    let mut client = joined(&app.base, &sync_token(&app, &alice, &[RUNS])).await;
    let reply = client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let head = reply.current_watermarks[0].watermark;
    for i in 0..3 {
        delta(&app, &alice, "rc_a", &format!("first_{i}")).await;
        delta(&app, &bob, "rc_b", &format!("first_{i}")).await;
    }
    let first = updates_until(&mut client, "three frames", |u| u.len() >= 3).await;
    assert_eq!(first.len(), 3);
    let last = first.last().unwrap().watermark;
    WatchState {
        topic: RUNS.into(),
        watermark: last,
    }
    .save(&state)
    .unwrap();
    client.close().await;

    // While disconnected, more commits land.
    for i in 0..4 {
        delta(&app, &alice, "rc_a", &format!("away_{i}")).await;
        delta(&app, &bob, "rc_b", &format!("away_{i}")).await;
    }
    finish_run(&app, &alice, "rc_a").await;

    // A new connection with a fresh token resumes from the persisted watermark.
    let saved = WatchState::load(&state).unwrap().unwrap();
    assert_eq!(saved.watermark, last);
    let mut again = joined(&app.base, &sync_token(&app, &alice, &[RUNS])).await;
    again
        .subscribe_from(&[(RUNS, Some(saved.watermark))])
        .await
        .unwrap()
        .unwrap();
    let rest = updates_until(&mut again, "alice's run to finish", |u| {
        finished(u, &["rc_a"])
    })
    .await;
    assert!(rest.iter().all(|u| u.watermark > saved.watermark));
    let store = &lane(&app).store;
    assert_delivered_exactly(
        &rest,
        &owned_rows(store, RUNS, saved.watermark, &alice).await,
    );
    let mut all = first.clone();
    all.extend(rest);
    assert_delivered_exactly(&all, &owned_rows(store, RUNS, head, &alice).await);
    assert_eq!(all.len(), 3 + 4 + 1);
}

async fn users_guests_and_orgs_on_one_topic_never_see_each_others_docs(db: &TestDb) {
    let app = spawn_app_with_sync(db).await;
    let principals = [
        (Who::user("1").in_org("org_a"), "iso_1a"),
        (Who::user("1").in_org("org_b"), "iso_1b"),
        (Who::user("2"), "iso_2"),
        (Who::guest("g1"), "iso_g1"),
    ];
    // Before anyone subscribes: two runs each, with a frame (hydration and replay).
    for (who, prefix) in &principals {
        for n in 0..2 {
            let run = format!("{prefix}_{n}");
            running(&app, who, &run).await;
            delta(&app, who, &run, "before").await;
        }
    }
    for (who, prefix) in &principals {
        settled_run(&app, who, &format!("{prefix}_1")).await;
    }
    let mut clients = Vec::new();
    for (who, prefix) in &principals {
        let token = sync_token(&app, who, &[RUNS]);
        let hydration = hydrate(&app.base, &token, RUNS).await;
        let keys: Vec<String> = hydration.docs.iter().map(|d| d.doc_key.clone()).collect();
        assert_eq!(
            keys,
            [
                run_key(&format!("{prefix}_0")),
                run_key(&format!("{prefix}_1"))
            ],
            "{who:?} hydrates only its own runs"
        );
        assert_owned_by(hydration.docs.iter().map(|d| d.payload.clone()), who);
        let mut client = joined(&app.base, &token).await;
        client
            .subscribe_from(&[(RUNS, Some(0))])
            .await
            .unwrap()
            .unwrap();
        clients.push((client, who.clone(), *prefix));
    }
    // Live: more frames and the finish, interleaved across principals.
    for step in ["live_1", "live_2"] {
        for (who, prefix) in &principals {
            for n in 0..2 {
                delta(&app, who, &format!("{prefix}_{n}"), step).await;
            }
        }
    }
    for (who, prefix) in &principals {
        for n in 0..2 {
            finish_run(&app, who, &format!("{prefix}_{n}")).await;
        }
    }
    let store = &lane(&app).store;
    for (client, who, prefix) in &mut clients {
        let runs = [format!("{prefix}_0"), format!("{prefix}_1")];
        let names: Vec<&str> = runs.iter().map(String::as_str).collect();
        let updates =
            updates_until(client, &format!("{who:?}'s runs"), |u| finished(u, &names)).await;
        assert_owned_by(updates.iter().filter_map(|u| u.payload.clone()), who);
        assert!(
            updates
                .iter()
                .all(|u| u.doc_key.starts_with(&run_key(prefix))),
            "{who:?} received another principal's doc"
        );
        assert_delivered_exactly(&updates, &owned_rows(store, RUNS, 0, who).await);
        assert_eq!(updates.len(), 2 * 6, "replay and live, both runs");
    }
    // Tenancy fails closed: without a tenant on the token, user 1 reads none of its tenants'
    // runs (only org-less ones, and it has none here); user 2's and the guest's stay hidden.
    let untenanted = hydrate(&app.base, &sync_token(&app, &Who::user("1"), &[RUNS]), RUNS).await;
    assert_eq!(untenanted.docs.len(), 0, "{:?}", untenanted.docs);
}

async fn a_cursor_below_the_retention_floor_is_stale_and_rehydration_recovers(db: &TestDb) {
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    running(&app, &alice, "ret_a").await;
    running(&app, &bob, "ret_b").await;
    for i in 0..3 {
        delta(&app, &alice, "ret_a", &format!("f{i}")).await;
        delta(&app, &bob, "ret_b", &format!("f{i}")).await;
    }
    settled_run(&app, &alice, "ret_a").await;
    settled_run(&app, &bob, "ret_b").await;
    let token = sync_token(&app, &alice, &[RUNS]);
    // A live client, subscribed at the head.
    let mut live = joined(&app.base, &token).await;
    let head = live
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap()
        .current_watermarks[0]
        .watermark;
    assert_eq!(head, 10, "2 runs × (created, started, 3 frames)");

    // Retention with a cutoff in the future prunes every row and raises the floor to the head.
    let sync = lane(&app);
    let spec = sync.store.spec_of_topic(RUNS).unwrap().clone();
    let now = projectors::runner::now_ms();
    let pruned = sync
        .store
        .prune(&spec, now + 3_600_000, u64::MAX, now)
        .await
        .unwrap();
    assert_eq!((pruned.rows, pruned.retention_floor), (10, 10));
    sync.notifier.committed(RUNS);

    // A cursor below the floor is refused with the full stale payload.
    let mut late = joined(&app.base, &token).await;
    let stale = late
        .subscribe_from(&[(RUNS, Some(4))])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(stale.code, ErrorCode::StaleCursor);
    assert_eq!(stale.extra["full_resync_required"], true);
    assert_eq!(
        stale.extra["stale_topics"],
        json!([{"topic": RUNS, "reason": "retention_floor_breach", "resume_after": 4,
                "retention_floor": 10, "head_watermark": 10, "replay_budget_events": 20000}])
    );
    // Re-hydration still has the docs (current state is not history) at a watermark at or above
    // the floor; subscribing from it works.
    let hydration = hydrate(&app.base, &token, RUNS).await;
    assert!(hydration.watermark >= pruned.retention_floor);
    assert_eq!(hydration.docs.len(), 1);
    assert_eq!(hydration.docs[0].payload["latest_seq"], 4);
    late.subscribe_from(&[(RUNS, Some(hydration.watermark))])
        .await
        .unwrap()
        .unwrap();
    // The live client at the floor was not affected; both get what commits next.
    delta(&app, &bob, "ret_b", "after").await;
    delta(&app, &alice, "ret_a", "after").await;
    finish_run(&app, &alice, "ret_a").await;
    settled_run(&app, &alice, "ret_a").await;
    let truth = owned_rows(&sync.store, RUNS, head, &alice).await;
    assert_eq!(truth.len(), 2);
    for client in [&mut live, &mut late] {
        let updates =
            updates_until(client, "alice's run to finish", |u| finished(u, &["ret_a"])).await;
        assert_delivered_exactly(&updates, &truth);
        assert_versions_continue(&hydration.docs, &updates);
    }
}

async fn a_rebuild_epoch_makes_live_cursors_stale_and_rehydration_recovers(db: &TestDb) {
    // No server heartbeat or idle timer fires within the test: the stale_cursor push can only
    // come from the tailer noticing the new epoch and waking the session.
    let mut settings = sync_settings();
    settings.gateway.heartbeat_interval = Duration::from_secs(600);
    settings.gateway.channel_idle_timeout = Duration::from_secs(600);
    settings.gateway.socket_idle_timeout = Duration::from_secs(600);
    let app = spawn_app_with(
        db,
        Options {
            sync: Some(settings),
            ..Options::default()
        },
    )
    .await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    running(&app, &alice, "eb_a").await;
    running(&app, &bob, "eb_b").await;
    delta(&app, &alice, "eb_a", "f0").await;
    delta(&app, &bob, "eb_b", "f0").await;
    settled_run(&app, &alice, "eb_a").await;
    settled_run(&app, &bob, "eb_b").await;
    let sync = lane(&app);
    let token = sync_token(&app, &alice, &[RUNS]);
    let before = hydrate(&app.base, &token, RUNS).await;
    let mut live = joined(&app.base, &token).await;
    live.subscribe_from(&[(RUNS, Some(before.watermark))])
        .await
        .unwrap()
        .unwrap();
    assert!(live.next_batch().await.unwrap().replay_complete);
    let old = sync.store.topic_states(&[RUNS]).await.unwrap().remove(0);
    assert_eq!((old.epoch, old.head_watermark), (1, before.watermark));

    // The lease-holding runner rebuilds within about a renewal period.
    assert!(sync
        .store
        .request_rebuild("run_summaries", projectors::runner::now_ms())
        .await
        .unwrap());
    let store = sync.store.clone();
    let new = eventually("the rebuild's new epoch", || {
        let store = store.clone();
        async move {
            let state = store.topic_states(&[RUNS]).await.unwrap().remove(0);
            (state.epoch == 2).then_some(state)
        }
    })
    .await;
    // One marker row at old head + 1 starts the epoch and is the floor.
    assert_eq!(new.epoch_start, old.head_watermark + 1);
    assert_eq!(new.retention_floor, new.epoch_start);
    assert_eq!(new.head_watermark, new.epoch_start);

    // The live subscription is told at once (not at its next timer) that its cursor is stale.
    let pushed = next_error(&mut live).await;
    assert_eq!(pushed.code, ErrorCode::StaleCursor);
    assert_eq!(
        pushed.extra["stale_topics"],
        json!([{"topic": RUNS, "reason": "epoch_changed", "resume_after": old.head_watermark,
                "retention_floor": new.epoch_start, "head_watermark": new.head_watermark,
                "replay_budget_events": 20000}])
    );
    // Subscribing from the old head is refused the same way.
    let refused = live
        .subscribe_from(&[(RUNS, Some(old.head_watermark))])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.extra["stale_topics"][0]["reason"], "epoch_changed");

    // Re-hydration: the same docs (a rebuild of an unchanged journal folds to the same bytes),
    // consistent with a watermark at or after the epoch start.
    let after = hydrate(&app.base, &token, RUNS).await;
    assert!(after.watermark >= new.epoch_start);
    let shape = |h: &HydrateResponse| -> Vec<(String, u64, String)> {
        h.docs
            .iter()
            .map(|d| (d.doc_key.clone(), d.doc_version, d.payload_hash.clone()))
            .collect()
    };
    assert_eq!(shape(&after), shape(&before));
    assert!(after.docs.iter().all(|d| d.watermark == new.epoch_start));

    // Subscribing from it works, and what commits next continues the docs' versions.
    live.subscribe_from(&[(RUNS, Some(after.watermark))])
        .await
        .unwrap()
        .unwrap();
    delta(&app, &bob, "eb_b", "f1").await;
    delta(&app, &alice, "eb_a", "f1").await;
    finish_run(&app, &alice, "eb_a").await;
    let updates = updates_until(&mut live, "alice's run to finish", |u| {
        finished(u, &["eb_a"])
    })
    .await;
    assert_delivered_exactly(
        &updates,
        &owned_rows(&sync.store, RUNS, after.watermark, &alice).await,
    );
    assert_versions_continue(&after.docs, &updates);
    assert!(updates.iter().all(|u| u.watermark > new.epoch_start));
}

async fn worker_summaries_and_events_follow_a_workers_lifecycle(db: &TestDb) {
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    let alice_token = sync_token(&app, &alice, &[WORKERS, EVENTS]);
    let bob_token = sync_token(&app, &bob, &[WORKERS, EVENTS]);
    let mut watchers = Vec::new();
    for token in [&alice_token, &bob_token] {
        let summaries = hydrate(&app.base, token, WORKERS).await;
        let events = hydrate(&app.base, token, EVENTS).await;
        assert!(summaries.docs.is_empty() && events.docs.is_empty());
        let mut client = joined(&app.base, token).await;
        client
            .subscribe_from(&[
                (WORKERS, Some(summaries.watermark)),
                (EVENTS, Some(events.watermark)),
            ])
            .await
            .unwrap()
            .unwrap();
        watchers.push(client);
    }
    let worker = "desktopw:e2e:1";
    send(
        &app,
        &alice,
        "/internal/v1/codex/workers",
        json!({"worker_id": worker, "adapter": "desktop", "metadata": {"surface": "e2e"}}),
    )
    .await;
    send(
        &app,
        &bob,
        "/internal/v1/codex/workers",
        json!({"worker_id": "desktopw:e2e:bob"}),
    )
    .await;
    send(
        &app,
        &alice,
        &format!("/internal/v1/codex/workers/{worker}/heartbeat"),
        json!({"lease_ttl_ms": 600000}),
    )
    .await;
    send(
        &app,
        &alice,
        &format!("/internal/v1/codex/workers/{worker}/requests"),
        json!({"request": {"request_id": "req_1", "method": "turn/start", "params": {"prompt": "hi"}}}),
    )
    .await;
    send(
        &app,
        &alice,
        &format!("/internal/v1/codex/workers/{worker}/events"),
        json!({"event": {"event_type": "worker.turn.completed", "payload": {"turn_id": "t1"}}}),
    )
    .await;
    send(
        &app,
        &alice,
        &format!("/internal/v1/codex/workers/{worker}/stop"),
        json!({}),
    )
    .await;
    let snapshot = alice
        .on(app.get(&format!("/internal/v1/codex/workers/{worker}/snapshot")))
        .send()
        .await;
    let latest_seq = snapshot.json["data"]["latest_seq"].as_u64().unwrap();
    assert_eq!(snapshot.json["data"]["status"], "stopped");

    let summary_key = projectors::worker_summary::doc_key(worker);
    let mut alice_client = watchers.remove(0);
    let updates = updates_until(&mut alice_client, "the worker's whole lifecycle", |u| {
        let stopped = u.iter().any(|x| {
            x.doc_key == summary_key && x.payload.as_ref().is_some_and(|p| p["status"] == "stopped")
        });
        let events = u.iter().filter(|x| x.topic == EVENTS).count() as u64;
        stopped && events == latest_seq
    })
    .await;
    let summaries: Vec<&Update> = updates.iter().filter(|u| u.topic == WORKERS).collect();
    let events: Vec<&Update> = updates.iter().filter(|u| u.topic == EVENTS).collect();
    // One summary version per worker event, latest_seq following the journal.
    assert_eq!(summaries.len() as u64, latest_seq);
    for (i, update) in summaries.iter().enumerate() {
        let payload = update.payload.as_ref().unwrap();
        assert_eq!(update.doc_key, summary_key);
        assert_eq!(update.doc_version, i as u64 + 1);
        assert_eq!(payload["latest_seq"], i as u64 + 1);
        assert_eq!(payload["owner_user_id"], "1");
    }
    let statuses: Vec<&str> = summaries
        .iter()
        .map(|u| u.payload.as_ref().unwrap()["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"starting"));
    assert!(statuses.contains(&"running"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"stopped"));
    // One event document per journal event, seq 1..=latest_seq, never re-versioned.
    let keys: Vec<String> = events.iter().map(|u| u.doc_key.clone()).collect();
    let expected: Vec<String> = (1..=latest_seq)
        .map(|seq| projectors::worker_events::doc_key(worker, seq))
        .collect();
    assert_eq!(keys, expected);
    assert!(events.iter().all(|u| u.doc_version == 1));
    let turn = events
        .iter()
        .find(|u| u.payload.as_ref().unwrap()["event_type"] == "worker.turn.completed")
        .expect("the reported event");
    assert_eq!(
        turn.payload.as_ref().unwrap()["payload"],
        json!({"turn_id": "t1"})
    );
    let store = &lane(&app).store;
    let by_topic = |topic: &str| -> Vec<Update> {
        updates
            .iter()
            .filter(|u| u.topic == topic)
            .cloned()
            .collect()
    };
    assert_delivered_exactly(
        &by_topic(WORKERS),
        &owned_rows(store, WORKERS, 0, &alice).await,
    );
    assert_delivered_exactly(
        &by_topic(EVENTS),
        &owned_rows(store, EVENTS, 0, &alice).await,
    );

    // Bob saw his own worker only.
    let mut bob_client = watchers.remove(0);
    let bobs = updates_until(&mut bob_client, "bob's worker", |u| {
        u.iter().any(|x| x.topic == WORKERS) && u.iter().any(|x| x.topic == EVENTS)
    })
    .await;
    assert!(bobs.iter().all(|u| u.doc_key.contains("desktopw:e2e:bob")));
    // Hydration afterwards: the summary's last version and every event.
    let summaries = hydrate(&app.base, &alice_token, WORKERS).await;
    assert_eq!(summaries.docs.len(), 1);
    assert_eq!(summaries.docs[0].doc_version, latest_seq);
    assert_eq!(summaries.docs[0].payload["status"], "stopped");
    assert_eq!(
        hydrate(&app.base, &alice_token, EVENTS).await.docs.len() as u64,
        latest_seq
    );
}

async fn bad_and_expired_tokens_forbidden_topics_and_revoked_sessions_are_refused(db: &TestDb) {
    let mut settings = sync_settings();
    // No clock-skew allowance, so a token expires while its socket is open within the test.
    settings.auth.leeway = Duration::ZERO;
    let app = spawn_app_with(
        db,
        Options {
            sync: Some(settings),
            ..Options::default()
        },
    )
    .await;
    let alice = Who::user("1");
    let now = now_secs();
    let claims = |iat: i64, exp: i64| {
        json!({"iss": "https://openagents.com", "aud": "openagents-sync", "sub": "user:1",
               "iat": iat, "nbf": iat, "exp": exp, "oa_sync_scopes": [RUNS]})
    };
    // Same kid as the server's key, another secret.
    let foreign = {
        let keys = sync_gateway::auth::KeySet::new()
            .with_active_hs256(
                sync_gateway::test_utils::TEST_KID,
                "not-the-servers-secret-0123456789",
            )
            .unwrap();
        mint(
            &sync_gateway::auth::AuthConfig::new(keys),
            lane(&app).gateway.known_topics(),
            &MintRequest {
                subject: alice.subject(),
                scopes: vec![RUNS.to_owned()],
                ..MintRequest::default()
            },
            now,
        )
        .unwrap()
        .token
    };
    for (name, token) in [
        ("missing", String::new()),
        ("garbage", "x.y.z".to_owned()),
        ("expired", sign_claims(&claims(now - 1000, now - 600))),
        ("signed with another key", foreign),
    ] {
        match connect(&app.base, &token).await {
            Err(ClientError::Refused { status, body }) => {
                assert_eq!(status, 403, "{name}: {body}");
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{name}");
            }
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => panic!("{name}: the upgrade was accepted"),
        }
    }
    let response = app
        .http
        .get(format!("{}/sync/v1/topics/{RUNS}/docs", app.base))
        .bearer_auth(sign_claims(&claims(now - 1000, now - 600)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Forbidden and unknown topics, on the socket and over HTTP.
    let token = sync_token(&app, &alice, &[RUNS]);
    let mut client = joined(&app.base, &token).await;
    let forbidden = client
        .subscribe_from(&[(RUNS, None), (WORKERS, None), ("runtime.nope", None)])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(forbidden.code, ErrorCode::ForbiddenTopic);
    assert_eq!(
        forbidden.extra["forbidden_topics"],
        json!([WORKERS, "runtime.nope"])
    );
    for (topic, status, code) in [
        (WORKERS, 403, "forbidden_topic"),
        ("runtime.nope", 404, "bad_topic"),
    ] {
        let response = app
            .http
            .get(format!("{}/sync/v1/topics/{topic}/docs", app.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            code
        );
    }
    // The refused subscribe left the socket usable.
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    running(&app, &alice, "auth_a").await;
    let updates = updates_until(&mut client, "the run's first versions", |u| u.len() >= 2).await;
    assert!(updates.iter().all(|u| u.doc_key == run_key("auth_a")));

    // A token that expires while connected ends access: sync:error, phx_close, Close 1008.
    let issued = now_secs();
    let short = sign_claims(&claims(issued, issued + 3));
    let mut expiring = joined(&app.base, &short).await;
    expiring
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let error = next_error(&mut expiring).await;
    assert_eq!(error.code, ErrorCode::Unauthorized);
    assert_eq!(expiring.next_push().await.unwrap(), Push::ChannelClosed);
    match expiring.next_frame().await {
        Err(ClientError::Closed(Some((code, _)))) => assert_eq!(code, 1008),
        other => panic!("{other:?}"),
    }

    // Session revocation is an internal route: refused without a signature, effective with one,
    // and only for the session's owner (recorded when the runtime minted it) or the operator.
    let minted = alice
        .on(app.post(
            "/api/sync/token",
            json!({"subject": alice.subject(), "scopes": [RUNS], "session_id": "sess-e2e"}),
        ))
        .send()
        .await;
    assert_eq!(minted.status, 200, "{}", minted.text);
    let session_token = minted.json["token"].as_str().unwrap().to_owned();
    let mut revocable = joined(&app.base, &session_token).await;
    revocable
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    let body = json!({"session_id": "sess-e2e", "reason": "logout"});
    let unsigned = app
        .http
        .post(format!("{}/internal/v1/sync/sessions/revoke", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let not_owner = Who::user("2")
        .on(app.post("/internal/v1/sync/sessions/revoke", body.clone()))
        .send()
        .await;
    not_owner.assert_error(403, "forbidden");
    let signed = alice
        .on(app.post("/internal/v1/sync/sessions/revoke", body))
        .send()
        .await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    assert_eq!(
        next_error(&mut revocable).await.code,
        ErrorCode::ReauthRequired
    );
    let refused = connect(&app.base, &session_token).await.err().unwrap();
    assert_eq!(refused.refusal_code().as_deref(), Some("reauth_required"));
}

async fn garbage_and_oversized_frames_on_the_real_server(db: &TestDb) {
    let app = spawn_app_with_sync(db).await;
    let alice = Who::user("1");
    let mut client = joined(&app.base, &sync_token(&app, &alice, &[RUNS])).await;
    for garbage in [
        "not json",
        "[1,2,3]",
        r#"{"topic":"sync:v1"}"#,
        r#"[null,null,1,"x",{}]"#,
    ] {
        client.send_raw(Message::text(garbage)).await.unwrap();
        match client.next_push().await.unwrap() {
            Push::Error(e) => assert_eq!(e.code, ErrorCode::BadSubscription, "{garbage}"),
            other => panic!("{garbage}: {other:?}"),
        }
    }
    client
        .send_raw(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert!(matches!(
        client.next_push().await.unwrap(),
        Push::Error(e) if e.code == ErrorCode::BadSubscription
    ));
    // Still usable: it subscribes and receives a real commit.
    client
        .subscribe_from(&[(RUNS, None)])
        .await
        .unwrap()
        .unwrap();
    create_run(&app, &alice, "garbage_a").await;
    let updates = updates_until(&mut client, "the created run", |u| !u.is_empty()).await;
    assert_eq!(updates[0].doc_key, run_key("garbage_a"));

    // A frame over the 64 KiB inbound limit: payload_too_large, then Close 1009.
    let huge = format!(
        r#"["1","9","sync:v1","sync:heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(70 * 1024)
    );
    client.send_raw(Message::text(huge)).await.unwrap();
    let mut saw_error = false;
    loop {
        match client.next_push().await {
            Ok(Push::Error(e)) => {
                assert_eq!(e.code, ErrorCode::PayloadTooLarge);
                assert_eq!(e.extra["max_frame_bytes"], 64 * 1024);
                saw_error = true;
            }
            Ok(_) => {}
            Err(ClientError::Closed(Some((code, _)))) => {
                assert_eq!(code, 1009);
                break;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(saw_error);
    // The server is fine: a new socket works.
    let mut again = joined(&app.base, &sync_token(&app, &alice, &[RUNS])).await;
    again
        .subscribe_from(&[(RUNS, Some(0))])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        updates_until(&mut again, "the replay", |u| !u.is_empty()).await[0].doc_key,
        run_key("garbage_a")
    );
}

async fn a_slow_consumer_is_disconnected_while_others_keep_receiving(db: &TestDb) {
    let mut settings = sync_settings();
    // A short queue and a one-second grace: a client that stops reading is struck three times
    // and disconnected within seconds (a merely busy reader is never blocked that long).
    settings.gateway.queue_limit = 2;
    settings.gateway.slow_consumer_grace = Duration::from_secs(1);
    settings.gateway.slow_consumer_max_strikes = 3;
    // The fast client sends no sync:heartbeat: on a loaded machine the writes take longer than
    // the default channel idle timeout, which would close its channel (not what this tests).
    settings.gateway.channel_idle_timeout = Duration::from_secs(600);
    let app = spawn_app_with(
        db,
        Options {
            sync: Some(settings),
            // Large documents fill a non-reading client's socket buffers quickly.
            configure: Box::new(|config| config.http.metadata_limit_bytes = 64 * 1024),
            ..Options::default()
        },
    )
    .await;
    let alice = Who::user("1");
    // Large documents: each run's metadata, sent once on its own topic.
    let token = sync_token(&app, &alice, &[RUN_METADATA]);
    let mut slow = joined(&app.base, &token).await;
    slow.subscribe_from(&[(RUN_METADATA, None)])
        .await
        .unwrap()
        .unwrap();
    let mut fast = joined(&app.base, &token).await;
    let head = fast
        .subscribe_from(&[(RUN_METADATA, None)])
        .await
        .unwrap()
        .unwrap()
        .current_watermarks[0]
        .watermark;
    // Runs with ~48 KB of metadata each: ~19 MB of updates, more than the socket buffers of a
    // client that never reads hold.
    let blob = "x".repeat(48 * 1024);
    let runs: Vec<String> = (0..400).map(|i| format!("slow_{i}")).collect();
    let writer = async {
        for run in &runs {
            create_run_with(&app, &alice, run, json!({"blob": blob})).await;
        }
    };
    let reader = updates_until(&mut fast, "every created run", |u| u.len() >= runs.len());
    let ((), received) = tokio::join!(writer, reader);
    let truth = owned_rows(&lane(&app).store, RUN_METADATA, head, &alice).await;
    assert_eq!(truth.len(), runs.len());
    assert_delivered_exactly(&received, &truth);
    let gateway = lane(&app).gateway.clone();
    eventually("the slow client's disconnect", || {
        let gateway = gateway.clone();
        async move { (gateway.stats_snapshot().slow_consumer_disconnects > 0).then_some(()) }
    })
    .await;
    // The slow client drains what was buffered and then finds the socket closed (1013).
    let mut notices = Vec::new();
    loop {
        match slow.next_push().await {
            Ok(Push::Error(e)) => {
                assert_eq!(e.code, ErrorCode::SlowConsumer);
                notices.push(e.extra["action"].as_str().unwrap().to_owned());
            }
            Ok(_) => {}
            Err(ClientError::Closed(close)) => {
                if let Some((code, _)) = close {
                    assert_eq!(code, 1013);
                }
                break;
            }
            Err(ClientError::WebSocket(_)) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(notices.iter().all(|a| a == "throttle" || a == "disconnect"));
    // The fast client is still live.
    create_run_with(&app, &alice, "after_slow", json!({"blob": blob})).await;
    let more = updates_until(&mut fast, "the next run", |u| !u.is_empty()).await;
    assert!(more
        .iter()
        .all(|u| u.doc_key == projectors::run_metadata::doc_key("after_slow")));
}

/// The official Phoenix JS client (`tests/js/phoenix_client.mjs`) against the real server:
/// hydrate over HTTP, join, subscribe from the hydration watermark, receive real commits.
mod phoenix_js {
    use super::*;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    on_both_backends!(the_official_phoenix_js_client_hydrates_then_receives_real_commits);

    async fn the_official_phoenix_js_client_hydrates_then_receives_real_commits(db: &TestDb) {
        let Some(dir) = crate::khala::phoenix_js::js_dir().await else {
            return;
        };
        let app = spawn_app_with_sync(db).await;
        let (alice, bob) = (Who::user("1"), Who::user("2"));
        running(&app, &alice, "js_a").await;
        delta(&app, &alice, "js_a", "before").await;
        running(&app, &bob, "js_b").await;
        settled_run(&app, &alice, "js_a").await;
        let token = sync_token(&app, &alice, &[RUNS]);
        let options = json!({
            "hydrate_url": app.base,
            "until_doc_key": run_key("js_a"),
            "until_status": "succeeded",
            "timeout_ms": WAIT.as_millis() as u64,
        });
        let mut child = Command::new("node")
            .arg("phoenix_client.mjs")
            .arg(app.base.replace("http://", "ws://"))
            .arg(&token)
            .arg(RUNS)
            .arg(options.to_string())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut hydrated = Value::Null;
        let mut last = Value::Null;
        while let Some(line) = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("node output")
            .unwrap()
        {
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            assert!(
                value.get("error").is_none(),
                "phoenix client failed: {value}"
            );
            match value["step"].as_str() {
                Some("hydrated") => hydrated = value.clone(),
                Some("ready") => {
                    // Commits after the subscription: live deltas through the real pipeline.
                    delta(&app, &bob, "js_b", "live").await;
                    delta(&app, &alice, "js_a", "live").await;
                    finish_run(&app, &alice, "js_a").await;
                }
                _ => {}
            }
            last = value;
        }
        let status = child.wait().await.unwrap();
        assert!(status.success(), "node exited with {status}: {last}");
        assert_eq!(last["step"], "done");
        assert_eq!(last["join"]["allowed_topics"], json!([RUNS]));
        assert_eq!(last["subscribe"]["topics"], json!([RUNS]));
        let watermark = hydrated["watermark"].as_u64().expect("hydrated first");
        let docs: Vec<HydratedDoc> = serde_json::from_value(hydrated["docs"].clone()).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            (docs[0].doc_version, &docs[0].payload["latest_seq"]),
            (3, &json!(2))
        );
        let updates: Vec<Update> = last["batches"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["updates"].as_array().unwrap().clone())
            .map(|u| serde_json::from_value(u).unwrap())
            .collect();
        assert_eq!(last["batches"][0]["replay_complete"], true);
        assert_delivered_exactly(
            &updates,
            &owned_rows(&lane(&app).store, RUNS, watermark, &alice).await,
        );
        assert_versions_continue(&docs, &updates);
        assert_eq!(updates.len(), 2, "the live frame and the finish");
        assert!(last["heartbeats"].as_u64().unwrap() >= 1);
    }
}

/// One hydration request with `query`: its status and JSON body.
async fn hydrate_query(
    base: &str,
    token: &str,
    topic: &str,
    query: &[(&str, &str)],
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/sync/v1/topics/{topic}/docs"))
        .query(query)
        .bearer_auth(token)
        .send()
        .await
        .expect("hydration request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("hydration body"))
}

async fn hydration_reads_in_pages_at_the_first_pages_watermark(db: &TestDb) {
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    for (who, run) in [
        (&alice, "pg_1"),
        (&bob, "pg_b1"),
        (&alice, "pg_2"),
        (&alice, "pg_3"),
        (&bob, "pg_b2"),
        (&alice, "pg_4"),
        (&alice, "pg_5"),
    ] {
        running(&app, who, run).await;
    }
    for run in ["pg_1", "pg_2", "pg_3", "pg_4", "pg_5"] {
        settled_run(&app, &alice, run).await;
    }
    let token = sync_token(&app, &alice, &[RUNS]);

    // Bad paging is a precise 400, never a partial or unbounded read.
    for (query, code) in [
        (vec![("limit", "0")], "invalid_request"),
        (vec![("limit", "1001")], "invalid_request"),
        (vec![("limit", "x")], "invalid_request"),
        (
            vec![("after", "runtime/run_summary:pg_1")],
            "invalid_request",
        ),
        (vec![("watermark", "1")], "invalid_request"),
        (
            vec![
                ("after", "runtime/run_summary:pg_1"),
                ("watermark", "999999"),
            ],
            "invalid_cursor",
        ),
    ] {
        let (status, body) = hydrate_query(&app.base, &token, RUNS, &query).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{query:?}: {body}"
        );
    }

    // Page one: two of alice's five runs, in key order, and the watermark to subscribe from.
    let (status, first) = hydrate_query(&app.base, &token, RUNS, &[("limit", "2")]).await;
    assert_eq!(status, 200, "{first}");
    let watermark = first["watermark"].as_u64().expect("watermark");
    let mut pages = vec![first];
    // Between pages: a new run that sorts before the cursor, and a change to one after it.
    running(&app, &alice, "pg_0").await;
    delta(&app, &alice, "pg_5", "late").await;
    settled_run(&app, &alice, "pg_0").await;
    settled_run(&app, &alice, "pg_5").await;
    while let Some(after) = pages.last().unwrap()["next_after"]
        .as_str()
        .map(str::to_owned)
    {
        let (status, page) = hydrate_query(
            &app.base,
            &token,
            RUNS,
            &[
                ("limit", "2"),
                ("after", &after),
                ("watermark", &watermark.to_string()),
            ],
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["watermark"],
            json!(watermark),
            "every page reports the first's"
        );
        pages.push(page);
    }
    assert_eq!(pages.len(), 3, "five documents in pages of two");
    assert!(
        pages[2].get("next_after").is_none(),
        "the last page says so"
    );
    let docs: Vec<HydratedDoc> = pages
        .iter()
        .flat_map(|p| serde_json::from_value::<Vec<HydratedDoc>>(p["docs"].clone()).unwrap())
        .collect();
    let keys: Vec<String> = docs.iter().map(|d| d.doc_key.clone()).collect();
    let expected: Vec<String> = ["pg_1", "pg_2", "pg_3", "pg_4", "pg_5"]
        .iter()
        .map(|r| run_key(r))
        .collect();
    assert_eq!(
        keys, expected,
        "alice's runs once each, in order; none of bob's; pg_0 is past the cursor"
    );
    assert_owned_by(docs.iter().map(|d| d.payload.clone()), &alice);
    let late = docs.iter().find(|d| d.doc_key == run_key("pg_5")).unwrap();
    assert!(
        late.watermark > watermark,
        "a later page may hold a newer version: {late:?}"
    );

    // Subscribing from the first page's watermark brings what the pages missed; applying by
    // version, the client ends with exactly the store's documents.
    let mut client = joined(&app.base, &token).await;
    client
        .subscribe_from(&[(RUNS, Some(watermark))])
        .await
        .unwrap()
        .unwrap();
    let updates = updates_until(&mut client, "pg_0 and pg_5's frame", |u| {
        u.iter().any(|u| u.doc_key == run_key("pg_0"))
            && u.iter()
                .any(|u| u.doc_key == run_key("pg_5") && u.doc_version == late.doc_version)
    })
    .await;
    let mut held: HashMap<String, (u64, Value)> = docs
        .iter()
        .map(|d| (d.doc_key.clone(), (d.doc_version, d.payload.clone())))
        .collect();
    for update in updates {
        let newer = held
            .get(&update.doc_key)
            .is_none_or(|(v, _)| update.doc_version > *v);
        if newer {
            held.insert(
                update.doc_key.clone(),
                (update.doc_version, update.payload.clone().unwrap()),
            );
        }
    }
    let whole = hydrate(&app.base, &token, RUNS).await;
    assert!(whole.next_after.is_none());
    let truth: HashMap<String, (u64, Value)> = whole
        .docs
        .into_iter()
        .map(|d| (d.doc_key, (d.doc_version, d.payload)))
        .collect();
    assert_eq!(held, truth);
}

/// The reported amplification: a run with large metadata, then frames. Each frame re-sends the
/// run's summary; the metadata must not ride along each time but be sent once, in its own
/// document, readable only by the run's owner.
async fn large_metadata_is_sent_once_not_with_every_summary_change(db: &TestDb) {
    const METADATA: &str = RUN_METADATA;
    let app = spawn_app_with_sync(db).await;
    let (alice, bob) = (Who::user("1"), Who::user("2"));
    let metadata = json!({"notes": "m".repeat(12 * 1024), "small": 1});
    create_run_with(&app, &alice, "big_meta", metadata.clone()).await;
    create_run_with(&app, &alice, "small_meta", json!({"k": "v"})).await;
    start_run(&app, &alice, "big_meta").await;
    for i in 0..20 {
        delta(&app, &alice, "big_meta", &format!("f{i}")).await;
    }
    settled_run(&app, &alice, "big_meta").await;
    let small = settled_run(&app, &alice, "small_meta").await;
    assert_eq!(
        small["metadata"],
        json!({"k": "v"}),
        "small metadata stays inline"
    );
    assert!(small.get("metadata_ref").is_none(), "{small}");

    let store = &lane(&app).store;
    let summaries: Vec<StreamRow> = store
        .all_rows(RUNS, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.doc_key == run_key("big_meta"))
        .collect();
    assert_eq!(summaries.len(), 22, "created, started, 20 frames");
    let summary_bytes: usize = summaries.iter().map(|r| r.payload.len()).sum();
    assert!(
        summary_bytes < 22 * 2048,
        "summaries re-send the metadata: {summary_bytes} bytes for 22 changes"
    );
    let last: Value = serde_json::from_str(&summaries.last().unwrap().payload).unwrap();
    assert_eq!(last["metadata"], json!({}));
    let reference = &last["metadata_ref"];
    assert_eq!(reference["topic"], METADATA);
    assert_eq!(reference["doc_key"], "runtime/run_metadata:big_meta");
    assert_eq!(
        reference["sha256"].as_str(),
        Some(aggregates::canonical::hash_canonical(&metadata).as_str())
    );

    let rows = eventually("the metadata document", || async {
        let rows = store.all_rows(METADATA, 0).await.unwrap();
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1, "one document, for the large metadata only");
    assert_eq!(rows[0].doc_key, "runtime/run_metadata:big_meta");

    let token = sync_token(&app, &alice, &[RUNS, METADATA]);
    let hydration = hydrate(&app.base, &token, METADATA).await;
    assert_eq!(hydration.docs.len(), 1);
    assert_eq!(hydration.docs[0].payload["metadata"], metadata);
    assert_eq!(
        hydration.docs[0].doc_key,
        reference["doc_key"].as_str().unwrap()
    );
    let bobs = hydrate(&app.base, &sync_token(&app, &bob, &[METADATA]), METADATA).await;
    assert!(bobs.docs.is_empty(), "{:?}", bobs.docs);
}

//! The session driven through channels under paused time: exact frames, timers, slow consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::auth::mint::{mint, MintRequest};
use crate::auth::{Revocations, Verifier};
use crate::config::GatewayConfig;
use crate::connection::InboundError;
use crate::gateway::Gateway;
use crate::protocol::Frame;
use crate::source::{DocOwner, Hydration, MemorySource, OwnerFilter, SourceError, StreamRow};
use crate::source::{HydratePage, SyncSource, TopicState};
use crate::test_utils::auth_config;

const TOPIC: &str = "runtime.run_summaries";

struct Harness {
    to_session: mpsc::Sender<Result<Message, InboundError>>,
    from_session: mpsc::Receiver<Message>,
    source: Arc<MemorySource>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
}

impl Harness {
    /// A session whose outbound channel holds `sink_capacity` frames.
    fn start(config: GatewayConfig, sink_capacity: usize, ttl: u64) -> Harness {
        let source = Arc::new(MemorySource::new());
        Self::start_over(config, sink_capacity, ttl, source.clone(), source)
    }

    /// The same over `gateway_source`, which reads `source`.
    fn start_over(
        config: GatewayConfig,
        sink_capacity: usize,
        ttl: u64,
        source: Arc<MemorySource>,
        gateway_source: Arc<dyn SyncSource>,
    ) -> Harness {
        let shutdown = CancellationToken::new();
        let verifier = Verifier::new(auth_config(), Revocations::in_memory());
        let gateway = Gateway::start(config, gateway_source, verifier.clone(), shutdown.clone());
        let token = mint(
            verifier.config(),
            gateway.known_topics(),
            &MintRequest {
                subject: "user:alice".into(),
                scopes: vec![TOPIC.into()],
                ttl_seconds: Some(ttl),
                ..MintRequest::default()
            },
            verifier.now(),
        )
        .unwrap()
        .token;
        let auth = verifier.verify(&token).unwrap();
        let (to_session, inbound) = mpsc::channel(16);
        let (outbound, from_session) = mpsc::channel(sink_capacity);
        let task = tokio::spawn(Session::run(gateway, auth, outbound, inbound));
        Harness {
            to_session,
            from_session,
            source,
            shutdown,
            task,
            start: Instant::now(),
        }
    }

    async fn send(&mut self, text: &str) {
        self.to_session.send(Ok(Message::text(text))).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(600), self.from_session.next())
            .await
            .expect("a frame within 600 s (virtual)")
            .expect("session still open")
    }

    async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn recv_frame(&mut self) -> Frame {
        Frame::parse(&self.recv_text().await).unwrap()
    }

    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    async fn join_and_subscribe(&mut self) {
        self.send(r#"["1","1","sync:v1","phx_join",{}]"#).await;
        let reply = self.recv_frame().await;
        assert_eq!(reply.payload["status"], "ok");
        self.send(&format!(
            r#"["1","2","sync:v1","sync:subscribe",{{"topics":["{TOPIC}"]}}]"#
        ))
        .await;
        let reply = self.recv_frame().await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        // The (empty) replay-complete batch.
        let batch = self.recv_frame().await;
        assert_eq!(batch.event, "sync:update_batch");
        assert_eq!(batch.payload["replay_complete"], true);
    }
}

fn code_of(frame: &Frame) -> Value {
    frame.payload["code"].clone()
}

#[tokio::test(start_paused = true)]
async fn phoenix_heartbeats_get_exact_replies_and_garbage_gets_an_error() {
    let mut h = Harness::start(GatewayConfig::default(), 16, 300);
    h.send(r#"[null,"7","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        h.recv_text().await,
        r#"[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
    h.send("{not json").await;
    let error = h.recv_frame().await;
    assert_eq!(
        (error.topic.as_str(), error.event.as_str()),
        ("phoenix", "sync:error")
    );
    assert_eq!(code_of(&error), "bad_subscription");
    h.send(r#"["1","2","rooms:lobby","phx_join",{}]"#).await;
    assert_eq!(
        h.recv_text().await,
        r#"["1","2","rooms:lobby","phx_reply",{"status":"error","response":{"code":"bad_topic","message":"unknown channel topic \"rooms:lobby\"; join \"sync:v1\""}}]"#
    );
    h.send(r#"["1","3","sync:v1","sync:subscribe",{"topics":[]}]"#)
        .await;
    let reply = h.recv_frame().await;
    assert_eq!(reply.payload["response"]["code"], "bad_subscription");
    // Still alive.
    h.send(r#"[null,"8","phoenix","heartbeat",{}]"#).await;
    assert_eq!(h.recv_frame().await.msg_ref.as_deref(), Some("8"));
    h.shutdown.cancel();
    assert!(matches!(h.recv().await, Message::Close(Some(frame)) if frame.code == 1001));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_every_15s_then_the_idle_channel_closes_at_60s_and_the_socket_at_90s() {
    let mut h = Harness::start(GatewayConfig::default(), 16, 900);
    h.join_and_subscribe().await;
    let joined_at = h.elapsed();
    let mut heartbeats = Vec::new();
    loop {
        let frame = h.recv_frame().await;
        match frame.event.as_str() {
            "sync:heartbeat" => {
                assert_eq!(
                    frame.payload,
                    json!({"watermarks": [{"topic": TOPIC, "watermark": 0}]})
                );
                heartbeats.push(h.elapsed() - joined_at);
                if heartbeats.len() == 3 {
                    // A Phoenix heartbeat keeps the socket, not the channel.
                    h.send(r#"[null,"9","phoenix","heartbeat",{}]"#).await;
                }
            }
            "phx_reply" => assert_eq!(frame.msg_ref.as_deref(), Some("9")),
            "phx_close" => {
                assert_eq!(frame.topic, "sync:v1");
                assert_eq!(h.elapsed() - joined_at, Duration::from_secs(60));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        heartbeats,
        [
            Duration::from_secs(15),
            Duration::from_secs(30),
            Duration::from_secs(45)
        ]
    );
    // The socket goes 90 s after the last frame (the Phoenix heartbeat at 45 s).
    match h.recv().await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, 1000),
        other => panic!("expected close, got {other:?}"),
    }
    assert_eq!(h.elapsed() - joined_at, Duration::from_secs(45 + 90));
}

#[tokio::test(start_paused = true)]
async fn sync_heartbeats_keep_the_channel_and_report_delivered_watermarks() {
    let mut h = Harness::start(GatewayConfig::default(), 16, 900);
    h.join_and_subscribe().await;
    h.source
        .append(TOPIC, "d1", json!({"n": 1}), DocOwner::user("alice"));
    h.source
        .append(TOPIC, "other", json!({"n": 2}), DocOwner::user("bob"));
    let batch = h.recv_frame().await;
    assert_eq!(batch.payload["updates"][0]["watermark"], 1);
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(50)).await;
        h.send(&format!(r#"["1","h{i}","sync:v1","sync:heartbeat",{{}}]"#))
            .await;
        loop {
            let frame = h.recv_frame().await;
            if frame.event == "phx_reply" {
                assert_eq!(frame.payload["status"], "ok");
                // Bob's row moved the topic to 2: nothing of Alice's is pending up to there.
                assert_eq!(
                    frame.payload["response"]["watermarks"],
                    json!([{"topic": TOPIC, "watermark": 2}])
                );
                break;
            }
            assert_eq!(frame.event, "sync:heartbeat");
        }
    }
    assert!(
        h.elapsed() > Duration::from_secs(240),
        "the channel outlived 60 s of idle windows"
    );
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_token_that_expires_while_connected_ends_access() {
    let mut h = Harness::start(GatewayConfig::default(), 16, 60);
    h.join_and_subscribe().await;
    // Keep the socket (not the channel) alive past the token's end.
    tokio::time::sleep(Duration::from_secs(50)).await;
    h.send(r#"[null,"9","phoenix","heartbeat",{}]"#).await;
    let mut saw_error = false;
    loop {
        match h.recv().await {
            Message::Text(text) => {
                let frame = Frame::parse(&text).unwrap();
                if frame.event == "sync:error" {
                    assert_eq!(code_of(&frame), "unauthorized");
                    saw_error = true;
                }
            }
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, 1008);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_error);
    // 60 s TTL + 30 s leeway (minus the sub-second the test took to mint and join).
    assert!(h.elapsed() >= Duration::from_secs(88) && h.elapsed() <= Duration::from_secs(90));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_throttled_then_disconnected() {
    let config = GatewayConfig {
        queue_limit: 2,
        slow_consumer_grace: Duration::from_secs(1),
        slow_consumer_max_strikes: 3,
        ..GatewayConfig::default()
    };
    // The "socket" holds one frame: the writer blocks as soon as the client stops reading.
    let mut h = Harness::start(config, 1, 900);
    h.join_and_subscribe().await;
    // Stop reading; keep committing.
    for i in 0..40 {
        h.source.append(
            TOPIC,
            &format!("d{i}"),
            json!({"i": i}),
            DocOwner::user("alice"),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut notices = Vec::new();
    let close_code;
    loop {
        match h.recv().await {
            Message::Text(text) => {
                let frame = Frame::parse(&text).unwrap();
                if frame.event == "sync:error" {
                    assert_eq!(code_of(&frame), "slow_consumer");
                    assert_eq!(frame.payload["queue_limit"], 2);
                    assert_eq!(frame.payload["topic"], TOPIC);
                    notices.push(frame.payload["action"].as_str().unwrap().to_owned());
                }
            }
            Message::Close(Some(frame)) => {
                close_code = frame.code;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(notices, ["throttle", "throttle", "disconnect"]);
    assert_eq!(close_code, 1013);
}

/// A source whose read of the page after `late_after` sees the store as of the call, then, while
/// still in flight, lets more of alice's rows commit: a read's snapshot predates what commits
/// while it runs.
struct LateCommits {
    inner: Arc<MemorySource>,
    late_after: u64,
    fired: AtomicBool,
}

#[async_trait::async_trait]
impl SyncSource for LateCommits {
    async fn topic_states(&self, topics: &[&str]) -> Result<Vec<TopicState>, SourceError> {
        self.inner.topic_states(topics).await
    }

    async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, SourceError> {
        let rows = self.inner.read_stream(topic, after, limit, owner).await;
        if after == self.late_after && !self.fired.swap(true, Ordering::SeqCst) {
            for i in 0..5 {
                self.inner.append(
                    TOPIC,
                    &format!("late{i}"),
                    json!({"late": i}),
                    DocOwner::user("alice"),
                );
            }
            // The tailer reads the late rows before this read returns.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows
    }

    async fn hydrate(
        &self,
        topic: &str,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        owner: &OwnerFilter,
    ) -> Result<Hydration, SourceError> {
        self.inner.hydrate(topic, doc_key, page, owner).await
    }

    fn subscribe_heads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe_heads()
    }
}

#[tokio::test(start_paused = true)]
async fn a_short_replay_page_moves_the_cursor_only_as_far_as_its_own_snapshot() {
    // Rows 1..=13 alice's, 14..=20 bob's. Pages of 10: the first page (1..=10) is full; the
    // page after 10 is short for alice (11..=13) and, while its read is in flight, alice's rows
    // 21..=25 commit. A short page may move the cursor to what was visible *before* the read
    // (20); jumping to the head seen after it (25) would skip the late rows.
    let memory = Arc::new(MemorySource::new());
    for i in 0..20 {
        let owner = if i < 13 { "alice" } else { "bob" };
        memory.append(
            TOPIC,
            &format!("d{i}"),
            json!({"i": i}),
            DocOwner::user(owner),
        );
    }
    let source = Arc::new(LateCommits {
        inner: memory.clone(),
        late_after: 10,
        fired: AtomicBool::new(false),
    });
    let config = GatewayConfig {
        window_rows: 1,
        ..GatewayConfig::default()
    };
    let mut h = Harness::start_over(config, 16, 900, memory, source.clone());
    h.send(r#"["1","1","sync:v1","phx_join",{}]"#).await;
    assert_eq!(h.recv_frame().await.payload["status"], "ok");
    h.send(&format!(
        r#"["1","2","sync:v1","sync:subscribe",{{"topics":["{TOPIC}"],"resume_after":{{"{TOPIC}":0}},"replay_batch_size":10}}]"#
    ))
    .await;
    assert_eq!(h.recv_frame().await.payload["status"], "ok");
    let mut seen = Vec::new();
    while seen.last() != Some(&25) {
        let frame = h.recv_frame().await;
        assert_eq!(frame.event, "sync:update_batch", "{frame:?}");
        for update in frame.payload["updates"].as_array().unwrap() {
            seen.push(update["watermark"].as_u64().unwrap());
        }
    }
    assert!(source.fired.load(Ordering::SeqCst));
    let expected: Vec<u64> = (1..=13).chain(21..=25).collect();
    assert_eq!(seen, expected);
    h.shutdown.cancel();
}

/// A replica that restarted behind where it was: it shows only rows up to `visible` (and caps
/// its head there), although a tailer read further before the restart.
struct SteppingBack {
    inner: Arc<MemorySource>,
    visible: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl SyncSource for SteppingBack {
    async fn topic_states(&self, topics: &[&str]) -> Result<Vec<TopicState>, SourceError> {
        let visible = self.visible.load(Ordering::SeqCst);
        let mut states = self.inner.topic_states(topics).await?;
        for state in &mut states {
            state.head_watermark = state.head_watermark.min(visible);
        }
        Ok(states)
    }

    async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        owner: &OwnerFilter,
    ) -> Result<Vec<StreamRow>, SourceError> {
        let visible = self.visible.load(Ordering::SeqCst);
        let mut rows = self.inner.read_stream(topic, after, limit, owner).await?;
        rows.retain(|r| r.watermark <= visible);
        Ok(rows)
    }

    async fn hydrate(
        &self,
        topic: &str,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        owner: &OwnerFilter,
    ) -> Result<Hydration, SourceError> {
        self.inner.hydrate(topic, doc_key, page, owner).await
    }

    fn subscribe_heads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe_heads()
    }
}

#[tokio::test(start_paused = true)]
async fn a_replay_never_skips_rows_a_source_that_stepped_back_does_not_show_yet() {
    // The tailer read alice's rows 1..=10; then the source (a standby restarted behind its last
    // replayed record) shows only 1..=4. A replay from 0 must deliver 1..=4, wait, and deliver
    // 5..=10 once the source shows them — never jump to the tailer's tail and skip them.
    let memory = Arc::new(MemorySource::new());
    for i in 0..10 {
        memory.append(
            TOPIC,
            &format!("d{i}"),
            json!({"i": i}),
            DocOwner::user("alice"),
        );
    }
    let source = Arc::new(SteppingBack {
        inner: memory.clone(),
        visible: std::sync::atomic::AtomicU64::new(10),
    });
    let config = GatewayConfig {
        window_rows: 1,
        ..GatewayConfig::default()
    };
    let mut h = Harness::start_over(config, 16, 900, memory, source.clone());
    tokio::time::sleep(Duration::from_millis(50)).await; // the tailer reads up to 10
    source.visible.store(4, Ordering::SeqCst);
    h.send(r#"["1","1","sync:v1","phx_join",{}]"#).await;
    assert_eq!(h.recv_frame().await.payload["status"], "ok");
    h.send(&format!(
        r#"["1","2","sync:v1","sync:subscribe",{{"topics":["{TOPIC}"],"resume_after":{{"{TOPIC}":0}}}}]"#
    ))
    .await;
    assert_eq!(h.recv_frame().await.payload["status"], "ok");
    let mut seen = Vec::new();
    while seen.last() != Some(&10) {
        let frame = h.recv_frame().await;
        assert_eq!(frame.event, "sync:update_batch", "{frame:?}");
        for update in frame.payload["updates"].as_array().unwrap() {
            seen.push(update["watermark"].as_u64().unwrap());
        }
        if seen.last() == Some(&4) {
            // The standby replays on.
            source.visible.store(10, Ordering::SeqCst);
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
    h.shutdown.cancel();
}

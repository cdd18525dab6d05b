//! The per-socket state machine: Phoenix heartbeats, the `sync:v1` channel (join, subscribe,
//! unsubscribe, heartbeat, leave), and one delivery loop per socket that sends replay and live
//! updates alike (from each topic's cursor to the head, then wait for a wake-up).
//!
//! Generic over the socket's `Sink`/`Stream` so unit tests drive it with channels.

mod bucket;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures::{Sink, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::{AuthContext, AuthError};
use crate::connection::{close_code, write_loop, InboundError, Outbound, QueuedBytes};
use crate::gateway::Gateway;
use crate::hub::{FeedHandle, PreparedRow, Pulled};
use crate::protocol::error::{SlowConsumer, SlowConsumerAction};
use crate::protocol::{
    event, ErrorCode, Frame, FrameKind, HeartbeatPush, HeartbeatReply, JoinParams, JoinReply,
    KhalaFrame, StaleReason, StaleTopic, SubscribeReply, SubscribeRequest, SyncError,
    TopicWatermark, UnsubscribeRequest, CHANNEL_TOPIC, PHOENIX_TOPIC,
};
use crate::source::{OwnerFilter, SourceError};
use bucket::TokenBucket;

/// Capacity of the priority lane (slow-consumer notices and Close frames).
const CONTROL_LANE: usize = 4;
/// How long a closing session waits for its writer to flush the Close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How a session ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed or the socket broke: nothing more to send.
    Gone,
    /// Send a Close frame with this code and reason, then end.
    Close(u16, &'static str),
}

/// A subscribed topic.
struct TopicSub {
    topic: String,
    /// The registration on this topic's feed for the session's principal.
    handle: FeedHandle,
    /// Every update of this topic visible to the principal with watermark `<= cursor` has been
    /// queued to the client.
    cursor: u64,
    /// The head when this topic's replay started; replay is complete once `cursor >= target`.
    target: u64,
}

impl TopicSub {
    fn head(&self) -> u64 {
        self.handle
            .tailer()
            .tail()
            .max(self.target)
            .max(self.cursor)
    }

    fn pending(&self) -> bool {
        self.cursor < self.handle.tailer().tail() || self.cursor < self.target
    }
}

/// The joined `sync:v1` channel.
struct Channel {
    join_ref: Option<String>,
    subscription_id: String,
    khala_frame: bool,
    topics: Vec<TopicSub>,
    /// Round-robin start for fair draining across topics.
    rr: usize,
    /// A subscribe started a replay whose `replay_complete: true` batch is not sent yet.
    replay_pending: bool,
    batch_size: usize,
    last_activity: Instant,
    next_heartbeat: Instant,
}

impl Channel {
    fn watermarks(&self) -> Vec<TopicWatermark> {
        self.topics
            .iter()
            .map(|t| TopicWatermark {
                topic: t.topic.clone(),
                watermark: t.cursor,
            })
            .collect()
    }

    fn heads(&self) -> Vec<TopicWatermark> {
        self.topics
            .iter()
            .map(|t| TopicWatermark {
                topic: t.topic.clone(),
                watermark: t.head(),
            })
            .collect()
    }

    fn replay_complete(&self) -> bool {
        self.topics.iter().all(|t| t.cursor >= t.target)
    }
}

/// Why pulling a topic failed.
enum PullError {
    Stale(StaleTopic),
    Source(SourceError),
}

/// One socket's session.
pub struct Session {
    gateway: Gateway,
    id: u64,
    auth: AuthContext,
    /// The token's ownership filter (shared: cloned per batch).
    filter: Arc<OwnerFilter>,
    /// Notified by tailers when this session's feeds grow (one stored permit at most).
    wake: Arc<Notify>,
    channel: Option<Channel>,
    bucket: TokenBucket,
    /// The writer's data queue (bounded: a full queue means the client is not reading).
    data_tx: mpsc::Sender<Outbound>,
    /// The writer's priority lane.
    control_tx: mpsc::Sender<Outbound>,
    queue_limit: usize,
    /// Bytes queued for the writer (the data queue's byte bound).
    queued: Arc<QueuedBytes>,
    strikes: u32,
    /// Since when the queue has been full while updates were waiting.
    blocked_since: Option<Instant>,
    last_frame_at: Instant,
    token_deadline: Instant,
}

enum Event {
    Shutdown,
    WriterDone,
    Revocations,
    TokenExpired,
    Inbound(Option<Result<Message, InboundError>>),
    Permit(mpsc::OwnedPermit<Outbound>),
    Woken,
    Heartbeat,
    ChannelIdle,
    SocketIdle,
    Strike,
}

/// The session's deadlines at one point of its loop.
struct Deadlines {
    token: Instant,
    strike: Option<Instant>,
    channel_idle: Option<Instant>,
    heartbeat: Option<Instant>,
    socket_idle: Instant,
}

impl Deadlines {
    fn earliest(&self) -> Instant {
        [
            self.strike,
            self.channel_idle,
            self.heartbeat,
            Some(self.socket_idle),
        ]
        .into_iter()
        .flatten()
        .fold(self.token, Instant::min)
    }

    /// Which deadline is due at `now` (in priority order; an idle close beats a heartbeat due
    /// at the same instant).
    fn due(&self, now: Instant) -> Event {
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if self.token <= now {
            Event::TokenExpired
        } else if due(self.strike) {
            Event::Strike
        } else if due(self.channel_idle) {
            Event::ChannelIdle
        } else if due(self.heartbeat) {
            Event::Heartbeat
        } else if self.socket_idle <= now {
            Event::SocketIdle
        } else {
            Event::Woken
        }
    }
}

fn error_response(error: &SyncError) -> Value {
    error.to_value()
}

impl Session {
    /// Runs a session over `sink`/`stream` until the client leaves, the token ends, the client
    /// is too slow, or the gateway shuts down (then it sends Close 1001).
    ///
    /// The writer runs as a separate task on the gateway's tracker; the caller should run this
    /// future on the tracker too.
    pub async fn run<S, R>(gateway: Gateway, auth: AuthContext, sink: S, mut stream: R)
    where
        S: Sink<Message> + Unpin + Send + 'static,
        S::Error: Display,
        R: Stream<Item = Result<Message, InboundError>> + Unpin,
    {
        let queue_limit = gateway.config().queue_limit.max(1);
        let (data_tx, data_rx) = mpsc::channel(queue_limit);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_LANE);
        let wake = Arc::new(Notify::new());
        let queued = Arc::new(QueuedBytes::new(
            gateway.config().queue_limit_bytes,
            wake.clone(),
        ));
        let mut writer: JoinHandle<Result<(), String>> =
            gateway
                .tracker()
                .spawn(write_loop(sink, data_rx, control_rx, queued.clone()));
        let now = Instant::now();
        let leeway = gateway.verifier().config().leeway.as_secs();
        let remaining = auth
            .expires_at
            .saturating_add(i64::try_from(leeway).unwrap_or(0))
            .saturating_sub(gateway.verifier().now());
        let token_deadline = now + Duration::from_secs(u64::try_from(remaining).unwrap_or(0));
        let config = gateway.config();
        let mut session = Session {
            id: gateway.next_session_id(),
            filter: Arc::new(auth.principal.owner_filter()),
            bucket: TokenBucket::new(config.subscribe_burst, config.subscribe_per_second, now),
            auth,
            wake,
            channel: None,
            data_tx,
            control_tx,
            queue_limit,
            queued,
            strikes: 0,
            blocked_since: None,
            last_frame_at: now,
            token_deadline,
            gateway,
        };
        let end = session.main_loop(&mut stream, &mut writer).await;
        session.channel = None; // unregister from feeds before waiting on the writer
        match end {
            End::Gone => writer.abort(),
            End::Close(code, reason) => {
                // After everything already queued; through the priority lane when the queue is
                // full (a slow consumer). A socket that stays blocked is dropped after the grace.
                if let Err(mpsc::error::TrySendError::Full(close)) =
                    session.data_tx.try_send(Outbound::Close(code, reason))
                {
                    let _ = session.control_tx.try_send(close);
                }
                if tokio::time::timeout(CLOSE_GRACE, &mut writer)
                    .await
                    .is_err()
                {
                    writer.abort();
                }
            }
        }
    }

    async fn main_loop<R>(
        &mut self,
        stream: &mut R,
        writer: &mut JoinHandle<Result<(), String>>,
    ) -> End
    where
        R: Stream<Item = Result<Message, InboundError>> + Unpin,
    {
        let shutdown = self.gateway.shutdown_token().clone();
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        let mut revocations = self.gateway.verifier().revocations().subscribe();
        let config = self.gateway.config().clone();
        // One timer for every deadline (heartbeat, idle, token, strike), reset only when the
        // earliest deadline changes: a wake-up per delivered batch must stay cheap.
        let mut timer = std::pin::pin!(tokio::time::sleep_until(self.token_deadline));
        let mut timer_at: Option<Instant> = None;
        loop {
            let pending = self.has_pending();
            self.track_blocked(pending);
            let deadlines = self.deadlines(&config);
            let next = deadlines.earliest();
            if timer_at != Some(next) {
                timer.as_mut().reset(next);
                timer_at = Some(next);
            }
            let tx = self.data_tx.clone();
            let wake = self.wake.clone();
            let event = tokio::select! {
                () = &mut cancelled => Event::Shutdown,
                _ = &mut *writer => Event::WriterDone,
                changed = revocations.changed() => match changed {
                    Ok(()) => Event::Revocations,
                    Err(_) => Event::WriterDone,
                },
                item = stream.next() => Event::Inbound(item),
                permit = tx.reserve_owned(), if pending && self.queued.has_room() => match permit {
                    Ok(permit) => Event::Permit(permit),
                    Err(_) => Event::WriterDone,
                },
                () = wake.notified() => Event::Woken,
                () = &mut timer => {
                    timer_at = None; // fired: re-arm on the next iteration
                    deadlines.due(Instant::now())
                }
            };
            let outcome = match event {
                Event::Shutdown => Err(End::Close(close_code::GOING_AWAY, "server shutting down")),
                Event::WriterDone => Err(End::Gone),
                Event::Revocations => self.check_revoked().await,
                Event::TokenExpired => {
                    self.end_access(
                        AuthError::Expired,
                        "sync token expired; refresh it and reconnect",
                    )
                    .await
                }
                Event::Inbound(item) => self.inbound(item).await,
                Event::Permit(permit) => self.deliver(permit).await,
                Event::Woken => {
                    // The common live path: deliver at once instead of another select round.
                    match self.data_tx.clone().try_reserve_owned() {
                        Ok(permit) if self.has_pending() && self.queued.has_room() => {
                            self.deliver(permit).await
                        }
                        _ => Ok(()),
                    }
                }
                Event::Heartbeat => self.heartbeat_push().await,
                Event::ChannelIdle => self.close_channel().await,
                Event::SocketIdle => Err(End::Close(close_code::NORMAL, "idle")),
                Event::Strike => self.strike(),
            };
            if let Err(end) = outcome {
                return end;
            }
        }
    }

    fn deadlines(&self, config: &crate::config::GatewayConfig) -> Deadlines {
        Deadlines {
            token: self.token_deadline,
            strike: self.blocked_since.map(|t| t + config.slow_consumer_grace),
            channel_idle: self
                .channel
                .as_ref()
                .map(|c| c.last_activity + config.channel_idle_timeout),
            heartbeat: self.channel.as_ref().map(|c| c.next_heartbeat),
            socket_idle: self.last_frame_at + config.socket_idle_timeout,
        }
    }

    fn has_pending(&self) -> bool {
        self.channel
            .as_ref()
            .is_some_and(|c| c.replay_pending || c.topics.iter().any(TopicSub::pending))
    }

    fn queue_depth(&self) -> usize {
        self.queue_limit - self.data_tx.capacity()
    }

    fn track_blocked(&mut self, pending: bool) {
        if self.queue_depth() == 0 {
            self.strikes = 0;
        }
        if pending && (self.data_tx.capacity() == 0 || !self.queued.has_room()) {
            self.blocked_since.get_or_insert_with(Instant::now);
        } else {
            self.blocked_since = None;
        }
    }

    // ---- sending -------------------------------------------------------------------------

    /// Queues a frame in order with the data; a queue that stays full past the grace period
    /// means the client is not reading.
    async fn send_text(&mut self, text: String) -> Result<(), End> {
        let grace = self.gateway.config().slow_consumer_grace;
        let out = self.queued.text(text);
        match tokio::time::timeout(grace, self.data_tx.send(out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.gateway
                    .stats()
                    .slow_consumer_disconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(End::Close(close_code::TRY_AGAIN_LATER, "slow consumer"))
            }
        }
    }

    async fn send_frame(&mut self, frame: Frame) -> Result<(), End> {
        self.send_text(frame.to_json()).await
    }

    async fn reply_ok(&mut self, request: &Frame, response: Value) -> Result<(), End> {
        self.send_frame(Frame::reply(request, "ok", response)).await
    }

    async fn reply_error(&mut self, request: &Frame, error: &SyncError) -> Result<(), End> {
        self.send_frame(Frame::reply(request, "error", error_response(error)))
            .await
    }

    /// The frame text of an error push: `sync:error`, or a `sync:frame` error envelope.
    fn error_push_text(&self, error: &SyncError, topic: Option<&str>) -> String {
        match &self.channel {
            Some(ch) if ch.khala_frame => {
                let bytes = serde_json::to_vec(error).expect("error payload serializes");
                let frame = KhalaFrame::new(topic.unwrap_or(""), 0, FrameKind::Error, &bytes);
                Frame::push(
                    ch.join_ref.as_deref(),
                    CHANNEL_TOPIC,
                    event::SYNC_FRAME,
                    json!(frame),
                )
                .to_json()
            }
            Some(ch) => Frame::push(
                ch.join_ref.as_deref(),
                CHANNEL_TOPIC,
                event::SYNC_ERROR,
                error.to_value(),
            )
            .to_json(),
            None => Frame::push(None, PHOENIX_TOPIC, event::SYNC_ERROR, error.to_value()).to_json(),
        }
    }

    async fn push_error(&mut self, error: &SyncError, topic: Option<&str>) -> Result<(), End> {
        let text = self.error_push_text(error, topic);
        self.send_text(text).await
    }

    /// Pushes `phx_close` for the channel (the client's channel object closes; no auto-rejoin).
    async fn push_phx_close(&mut self) -> Result<(), End> {
        let Some(ch) = &self.channel else {
            return Ok(());
        };
        let frame = Frame {
            join_ref: ch.join_ref.clone(),
            msg_ref: ch.join_ref.clone(),
            topic: CHANNEL_TOPIC.to_owned(),
            event: event::CLOSE.to_owned(),
            payload: json!({}),
        };
        self.send_frame(frame).await
    }

    // ---- auth over time ------------------------------------------------------------------

    async fn end_access(&mut self, error: AuthError, message: &str) -> Result<(), End> {
        let payload = SyncError::new(error.code(), message);
        self.push_error(&payload, None).await?;
        self.push_phx_close().await?;
        Err(End::Close(
            close_code::POLICY,
            match error.code() {
                ErrorCode::ReauthRequired => "reauth required",
                _ => "unauthorized",
            },
        ))
    }

    async fn check_revoked(&mut self) -> Result<(), End> {
        match self.gateway.verifier().revocations().revoked(&self.auth) {
            Some(kind) => {
                self.end_access(
                    AuthError::Revoked(kind),
                    &format!("{kind} revoked; authenticate again"),
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// Whether the token is still good (for joins); `Err` carries the refusal.
    fn token_still_valid(&self) -> Result<(), AuthError> {
        if Instant::now() >= self.token_deadline {
            return Err(AuthError::Expired);
        }
        match self.gateway.verifier().revocations().revoked(&self.auth) {
            Some(kind) => Err(AuthError::Revoked(kind)),
            None => Ok(()),
        }
    }

    // ---- slow consumers ------------------------------------------------------------------

    fn slow_consumer_notice(&self, action: SlowConsumerAction) -> SyncError {
        let config = self.gateway.config();
        let (mut topic, mut lag, mut resync) = (None, 0, false);
        if let Some(ch) = &self.channel {
            for t in &ch.topics {
                let behind = t.head().saturating_sub(t.cursor);
                let budget = config
                    .policy(&t.topic)
                    .map_or(u64::MAX, |p| p.replay_budget);
                resync |= behind > budget;
                if behind >= lag {
                    lag = behind;
                    topic = Some(t.topic.clone());
                }
            }
        }
        SlowConsumer {
            action,
            topic,
            queue_depth: self.queue_depth(),
            queue_limit: self.queue_limit,
            reconnect_after_ms: u64::try_from(config.slow_consumer_reconnect_after.as_millis())
                .unwrap_or(u64::MAX),
            full_resync_required: resync && action == SlowConsumerAction::Disconnect,
        }
        .into()
    }

    fn strike(&mut self) -> Result<(), End> {
        self.strikes += 1;
        let stats = self.gateway.stats();
        let disconnect = self.strikes >= self.gateway.config().slow_consumer_max_strikes;
        let action = if disconnect {
            stats
                .slow_consumer_disconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SlowConsumerAction::Disconnect
        } else {
            stats
                .slow_consumer_throttles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SlowConsumerAction::Throttle
        };
        let notice = self.slow_consumer_notice(action);
        let topic = notice
            .extra
            .get("topic")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let text = self.error_push_text(&notice, topic.as_deref());
        // Priority lane: it overtakes the queued data (dropped if even that lane is full).
        let _ = self.control_tx.try_send(self.queued.text(text));
        tracing::info!(
            session = self.id,
            strikes = self.strikes,
            ?action,
            "slow consumer"
        );
        if disconnect {
            return Err(End::Close(close_code::TRY_AGAIN_LATER, "slow consumer"));
        }
        self.blocked_since = Some(Instant::now());
        Ok(())
    }

    // ---- inbound -------------------------------------------------------------------------

    async fn inbound(&mut self, item: Option<Result<Message, InboundError>>) -> Result<(), End> {
        match item {
            None | Some(Ok(Message::Close(_))) => Err(End::Gone),
            Some(Err(InboundError::TooLarge)) => {
                let max = self.gateway.config().max_inbound_frame_bytes;
                let error = SyncError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("frames from clients are limited to {max} bytes"),
                )
                .with("max_frame_bytes", max);
                let _ = self.push_error(&error, None).await;
                Err(End::Close(close_code::TOO_BIG, "frame too large"))
            }
            Some(Err(InboundError::Protocol(e))) => {
                tracing::debug!(session = self.id, error.message = %e, "websocket read failed");
                Err(End::Gone)
            }
            Some(Ok(Message::Text(text))) => {
                self.last_frame_at = Instant::now();
                self.text_frame(text.as_str()).await
            }
            Some(Ok(Message::Binary(_))) => {
                self.last_frame_at = Instant::now();
                let error = SyncError::new(
                    ErrorCode::BadSubscription,
                    "binary frames are not supported; send Phoenix v2 JSON text frames",
                );
                self.push_error(&error, None).await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.last_frame_at = Instant::now();
                Ok(())
            }
        }
    }

    async fn text_frame(&mut self, text: &str) -> Result<(), End> {
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                let error =
                    SyncError::new(ErrorCode::BadSubscription, format!("malformed frame: {e}"));
                return self.push_error(&error, None).await;
            }
        };
        if frame.topic == PHOENIX_TOPIC {
            return if frame.event == event::HEARTBEAT {
                self.reply_ok(&frame, json!({})).await
            } else {
                let error = SyncError::new(
                    ErrorCode::BadSubscription,
                    format!("unknown event {:?} on topic phoenix", frame.event),
                );
                self.reply_error(&frame, &error).await
            };
        }
        if frame.topic != CHANNEL_TOPIC {
            let error = SyncError::new(
                ErrorCode::BadTopic,
                format!(
                    "unknown channel topic {:?}; join {CHANNEL_TOPIC:?}",
                    frame.topic
                ),
            );
            return self.reply_error(&frame, &error).await;
        }
        match frame.event.as_str() {
            event::JOIN => self.join(&frame).await,
            _ if self.channel.is_none() => {
                let error = SyncError::new(
                    ErrorCode::BadSubscription,
                    format!("join {CHANNEL_TOPIC} before sending {:?}", frame.event),
                );
                self.reply_error(&frame, &error).await
            }
            event::LEAVE => {
                self.channel = None;
                self.reply_ok(&frame, json!({})).await
            }
            event::SUBSCRIBE => self.subscribe(&frame).await,
            event::UNSUBSCRIBE => self.unsubscribe(&frame).await,
            event::SYNC_HEARTBEAT => self.heartbeat_reply(&frame).await,
            other => {
                let error = SyncError::new(
                    ErrorCode::BadSubscription,
                    format!("unknown event {other:?}"),
                );
                self.reply_error(&frame, &error).await
            }
        }
    }

    async fn join(&mut self, frame: &Frame) -> Result<(), End> {
        if let Err(refusal) = self.token_still_valid() {
            let error = SyncError::new(refusal.code(), refusal.to_string());
            return self.reply_error(frame, &error).await;
        }
        let params: JoinParams = match &frame.payload {
            Value::Null => JoinParams::default(),
            payload => match serde_json::from_value(payload.clone()) {
                Ok(params) => params,
                Err(e) => {
                    let error =
                        SyncError::new(ErrorCode::BadSubscription, format!("bad join params: {e}"));
                    return self.reply_error(frame, &error).await;
                }
            },
        };
        if self.channel.is_some() {
            // A rejoin replaces the channel (as Phoenix does): close the old one first.
            self.push_phx_close().await?;
            self.channel = None;
        }
        let now = Instant::now();
        let config = self.gateway.config();
        let channel = Channel {
            join_ref: frame.join_ref.clone(),
            subscription_id: format!("sub_{}", uuid::Uuid::new_v4().simple()),
            khala_frame: params.khala_frame,
            topics: Vec::new(),
            rr: 0,
            replay_pending: false,
            batch_size: config.default_replay_batch_size,
            last_activity: now,
            next_heartbeat: now + config.heartbeat_interval,
        };
        let reply = JoinReply {
            subscription_id: channel.subscription_id.clone(),
            allowed_topics: self.auth.allowed_topics(self.gateway.known_topics()),
            current_watermarks: Vec::new(),
        };
        self.channel = Some(channel);
        self.reply_ok(frame, json!(reply)).await
    }

    fn touch(&mut self) {
        if let Some(ch) = &mut self.channel {
            ch.last_activity = Instant::now();
        }
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<(), End> {
        self.touch();
        if let Err(retry_after) = self.bucket.take(Instant::now()) {
            let ms = u64::try_from(retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            return self.reply_error(frame, &SyncError::rate_limited(ms)).await;
        }
        let bad = |message: String| SyncError::new(ErrorCode::BadSubscription, message);
        let request: SubscribeRequest = match serde_json::from_value(frame.payload.clone()) {
            Ok(request) => request,
            Err(e) => {
                return self
                    .reply_error(frame, &bad(format!("bad sync:subscribe payload: {e}")))
                    .await
            }
        };
        let config = self.gateway.config().clone();
        // Bounded before any per-topic work (dedup, scope checks, resume pairs, store reads): a
        // hostile frame of thousands of topic names costs one length check.
        let resume_len = request.resume_after.as_ref().map_or(0, |r| r.len());
        if request.topics.len() > config.max_topics_per_subscription
            || resume_len > config.max_topics_per_subscription
        {
            let error = bad(format!(
                "a subscription holds at most {} topics",
                config.max_topics_per_subscription
            ))
            .with("max_topics", config.max_topics_per_subscription);
            return self.reply_error(frame, &error).await;
        }
        let mut topics: Vec<String> = Vec::new();
        for topic in &request.topics {
            if !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        if topics.is_empty() {
            return self
                .reply_error(frame, &bad("topics must name at least one topic".into()))
                .await;
        }
        let resume: Vec<(String, u64)> = match request.resume_after.as_ref().map(|r| r.pairs()) {
            None => Vec::new(),
            Some(Ok(pairs)) => pairs,
            Some(Err(message)) => return self.reply_error(frame, &bad(message)).await,
        };
        let batch_size = match request.replay_batch_size {
            None => None,
            Some(n) if n < 1 => {
                return self
                    .reply_error(frame, &bad("replay_batch_size must be at least 1".into()))
                    .await
            }
            Some(n) => Some(
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(config.max_replay_batch_size),
            ),
        };
        let forbidden: Vec<String> = topics
            .iter()
            .filter(|t| !self.gateway.known_topics().contains(t) || !self.auth.grants(t))
            .cloned()
            .collect();
        if !forbidden.is_empty() {
            return self
                .reply_error(frame, &SyncError::forbidden_topic(&forbidden))
                .await;
        }
        let channel = self
            .channel
            .as_ref()
            .expect("subscribe runs on a joined channel");
        let total = channel.topics.len()
            + topics
                .iter()
                .filter(|t| !channel.topics.iter().any(|s| &s.topic == *t))
                .count();
        if total > config.max_topics_per_subscription {
            let error = bad(format!(
                "a subscription holds at most {} topics",
                config.max_topics_per_subscription
            ))
            .with("max_topics", config.max_topics_per_subscription);
            return self.reply_error(frame, &error).await;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let states = match self.gateway.source().topic_states(&names).await {
            Ok(states) => states,
            Err(e) => {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "sync source failed at subscribe");
                let error = SyncError::new(
                    ErrorCode::Internal,
                    "sync source unavailable; retry with backoff",
                );
                return self.reply_error(frame, &error).await;
            }
        };
        let mut stale = Vec::new();
        for state in &states {
            let Some(&(_, cursor)) = resume.iter().find(|(t, _)| *t == state.topic) else {
                continue;
            };
            let budget = config
                .policy(&state.topic)
                .map_or(u64::MAX, |p| p.replay_budget);
            let reason = if cursor < state.retention_floor {
                Some(if cursor < state.epoch_start {
                    StaleReason::EpochChanged
                } else {
                    StaleReason::RetentionFloorBreach
                })
            } else if cursor > state.head_watermark {
                Some(StaleReason::CursorAhead)
            } else if state.head_watermark - cursor > budget {
                Some(StaleReason::ReplayBudgetExceeded)
            } else {
                None
            };
            if let Some(reason) = reason {
                stale.push(StaleTopic {
                    topic: state.topic.clone(),
                    reason,
                    resume_after: cursor,
                    retention_floor: state.retention_floor,
                    head_watermark: state.head_watermark,
                    replay_budget_events: budget,
                });
            }
        }
        if !stale.is_empty() {
            return self
                .reply_error(frame, &SyncError::stale_cursor(&stale))
                .await;
        }
        let principal = self.auth.principal.clone();
        let (id, wake) = (self.id, self.wake.clone());
        let mut attach = Vec::new();
        for state in &states {
            let tailer = self
                .gateway
                .tailer(&state.topic)
                .expect("known topics have tailers")
                .clone();
            attach.push((state.clone(), tailer));
        }
        let channel = self.channel.as_mut().expect("joined");
        for (state, tailer) in attach {
            let resume_at = resume
                .iter()
                .find(|(t, _)| *t == state.topic)
                .map(|&(_, c)| c);
            match channel.topics.iter_mut().find(|s| s.topic == state.topic) {
                Some(existing) => {
                    if let Some(cursor) = resume_at {
                        existing.cursor = cursor;
                    }
                    existing.target = existing.target.max(state.head_watermark);
                }
                None => channel.topics.push(TopicSub {
                    topic: state.topic.clone(),
                    handle: tailer.attach(&principal, id, wake.clone()),
                    cursor: resume_at.unwrap_or(state.head_watermark),
                    target: state.head_watermark,
                }),
            }
        }
        if let Some(size) = batch_size {
            channel.batch_size = size;
        }
        channel.replay_pending = true;
        let reply = SubscribeReply {
            subscription_id: channel.subscription_id.clone(),
            topics: channel.topics.iter().map(|t| t.topic.clone()).collect(),
            current_watermarks: channel.heads(),
            request_id: request.request_id,
        };
        self.reply_ok(frame, json!(reply)).await
    }

    async fn unsubscribe(&mut self, frame: &Frame) -> Result<(), End> {
        self.touch();
        let request: UnsubscribeRequest = match serde_json::from_value(frame.payload.clone()) {
            Ok(request) => request,
            Err(e) => {
                let error = SyncError::new(
                    ErrorCode::BadSubscription,
                    format!("bad sync:unsubscribe payload: {e}"),
                );
                return self.reply_error(frame, &error).await;
            }
        };
        let channel = self.channel.as_mut().expect("joined");
        channel
            .topics
            .retain(|t| !request.topics.contains(&t.topic));
        channel.rr = 0;
        let reply = SubscribeReply {
            subscription_id: channel.subscription_id.clone(),
            topics: channel.topics.iter().map(|t| t.topic.clone()).collect(),
            current_watermarks: channel.heads(),
            request_id: request.request_id,
        };
        self.reply_ok(frame, json!(reply)).await
    }

    /// Moves cursors of topics with nothing pending for this principal up to the tail, so the
    /// watermarks a heartbeat reports are as fresh as possible.
    fn advance_idle_cursors(&mut self) {
        let Some(ch) = &mut self.channel else { return };
        for t in &mut ch.topics {
            if let Pulled::Rows { rows, cursor } =
                t.handle.tailer().pull(t.handle.feed(), t.cursor, 1)
            {
                if rows.is_empty() && cursor >= t.target {
                    t.cursor = t.cursor.max(cursor);
                }
            }
        }
    }

    async fn heartbeat_reply(&mut self, frame: &Frame) -> Result<(), End> {
        self.touch();
        self.advance_idle_cursors();
        let ch = self.channel.as_ref().expect("joined");
        let reply = HeartbeatReply {
            subscription_id: ch.subscription_id.clone(),
            watermarks: ch.watermarks(),
        };
        self.reply_ok(frame, json!(reply)).await
    }

    async fn heartbeat_push(&mut self) -> Result<(), End> {
        let config = self.gateway.config();
        let (interval, idle) = (config.heartbeat_interval, config.channel_idle_timeout);
        if self
            .channel
            .as_ref()
            .is_some_and(|ch| Instant::now() >= ch.last_activity + idle)
        {
            // Both timers fired together: the idle close wins.
            return self.close_channel().await;
        }
        self.advance_idle_cursors();
        let Some(ch) = &mut self.channel else {
            return Ok(());
        };
        ch.next_heartbeat = Instant::now() + interval;
        let push = HeartbeatPush {
            watermarks: ch.watermarks(),
        };
        let frame = Frame::push(
            ch.join_ref.as_deref(),
            CHANNEL_TOPIC,
            event::SYNC_HEARTBEAT,
            json!(push),
        );
        self.send_frame(frame).await
    }

    async fn close_channel(&mut self) -> Result<(), End> {
        tracing::debug!(session = self.id, "closing idle channel");
        self.push_phx_close().await?;
        self.channel = None;
        Ok(())
    }

    // ---- delivery ------------------------------------------------------------------------

    /// Builds and queues one batch (fair across topics), using the reserved queue slot.
    async fn deliver(&mut self, permit: mpsc::OwnedPermit<Outbound>) -> Result<(), End> {
        let gateway = self.gateway.clone();
        let config = gateway.config();
        let filter = self.filter.clone();
        let Some(ch) = self.channel.as_mut() else {
            return Ok(());
        };
        let count = ch.topics.len();
        let mut order: Vec<usize> = (0..count)
            .map(|i| (ch.rr + i) % count.max(1))
            .filter(|&i| ch.topics[i].pending())
            .collect();
        if ch.khala_frame {
            order.truncate(1);
        }
        let limit = ch.batch_size.max(1);
        let quota = limit.div_ceil(order.len().max(1));
        let max_bytes = config.max_batch_bytes.saturating_sub(512 + 96 * count);
        let mut batch: Vec<Arc<PreparedRow>> = Vec::new();
        let mut bytes = 0usize;
        let mut stale: Vec<(usize, StaleTopic)> = Vec::new();
        let mut source_failed = false;
        for &i in &order {
            if batch.len() >= limit || bytes >= max_bytes {
                break;
            }
            let want = quota.min(limit - batch.len());
            let sub = &mut ch.topics[i];
            match pull(&gateway, &*sub, &filter, want, config.max_update_bytes).await {
                Ok((rows, all_cursor)) => {
                    let mut taken = 0;
                    for row in &rows {
                        if !batch.is_empty() && bytes + row.json.len() + 1 > max_bytes {
                            break;
                        }
                        bytes += row.json.len() + 1;
                        batch.push(row.clone());
                        taken += 1;
                    }
                    sub.cursor = if taken == rows.len() {
                        all_cursor.max(sub.cursor)
                    } else if taken > 0 {
                        rows[taken - 1].watermark
                    } else {
                        sub.cursor
                    };
                }
                Err(PullError::Stale(topic)) => stale.push((i, topic)),
                Err(PullError::Source(e)) => {
                    tracing::error!(error.message = %e, error.cause_chain = ?e, "sync source failed during delivery");
                    source_failed = true;
                    break;
                }
            }
        }
        if source_failed {
            drop(permit);
            let error = SyncError::new(
                ErrorCode::Internal,
                "sync source unavailable; reconnect with backoff",
            );
            self.push_error(&error, None).await?;
            return Err(End::Close(close_code::INTERNAL, "sync source unavailable"));
        }
        let ch = self.channel.as_mut().expect("checked above");
        if count > 0 {
            ch.rr = (ch.rr + 1) % count;
        }
        let replay_complete = ch.replay_complete();
        let mut sent_rows = 0;
        if !batch.is_empty() || (ch.replay_pending && replay_complete) {
            let topic = order.first().map(|&i| ch.topics[i].topic.clone());
            let text = batch_text(ch, &batch, replay_complete, topic.as_deref());
            if replay_complete {
                ch.replay_pending = false;
            }
            sent_rows = batch.len();
            permit.send(self.queued.text(text));
        } else {
            drop(permit);
        }
        if sent_rows > 0 {
            let stats = self.gateway.stats();
            stats
                .batches_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .updates_sent
                .fetch_add(sent_rows as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if !stale.is_empty() {
            // The cursor fell out of what replay can serve mid-stream: drop those topics; the
            // client re-hydrates and subscribes again.
            let indices: Vec<usize> = stale.iter().map(|(i, _)| *i).collect();
            let topics: Vec<StaleTopic> = stale.into_iter().map(|(_, t)| t).collect();
            if let Some(ch) = self.channel.as_mut() {
                let mut index = 0;
                ch.topics.retain(|_| {
                    let keep = !indices.contains(&index);
                    index += 1;
                    keep
                });
                ch.rr = 0;
            }
            let first = topics.first().map(|t| t.topic.clone());
            self.push_error(&SyncError::stale_cursor(&topics), first.as_deref())
                .await?;
        }
        Ok(())
    }
}

/// Rows of `sub` after its cursor (from memory when it covers the cursor, else from the
/// source) and the cursor to move to if all are delivered.
async fn pull(
    gateway: &Gateway,
    sub: &TopicSub,
    filter: &OwnerFilter,
    limit: usize,
    max_update_bytes: usize,
) -> Result<(Vec<Arc<PreparedRow>>, u64), PullError> {
    let tailer = sub.handle.tailer();
    if let Pulled::Rows { rows, cursor } = tailer.pull(sub.handle.feed(), sub.cursor, limit) {
        if !rows.is_empty() || cursor >= sub.target {
            return Ok((rows, cursor));
        }
    }
    // Replay from the source. Rows up to the tail (read by the tailer) and up to the target
    // (the head when the replay started) are visible, so a short read covers them.
    let visible = tailer.tail().max(sub.target);
    let source = gateway.source();
    let stale = |state: &crate::source::TopicState| {
        let budget = gateway
            .config()
            .policy(&sub.topic)
            .map_or(u64::MAX, |p| p.replay_budget);
        PullError::Stale(StaleTopic {
            topic: sub.topic.clone(),
            reason: if sub.cursor < state.epoch_start {
                StaleReason::EpochChanged
            } else {
                StaleReason::RetentionFloorBreach
            },
            resume_after: sub.cursor,
            retention_floor: state.retention_floor,
            head_watermark: state.head_watermark,
            replay_budget_events: budget,
        })
    };
    let rows = match source
        .read_stream(&sub.topic, sub.cursor, limit, filter)
        .await
    {
        Ok(rows) => rows,
        Err(SourceError::Stale { state }) => return Err(stale(&state)),
        Err(e) => return Err(PullError::Source(e)),
    };
    // For sources that do not check the floor in the read's snapshot: rows after the cursor
    // may have been pruned (or dropped by a rebuild) during the read.
    let state = source
        .topic_states(&[sub.topic.as_str()])
        .await
        .map_err(PullError::Source)?
        .pop()
        .unwrap_or_default();
    if state.retention_floor > sub.cursor {
        return Err(stale(&state));
    }
    let last = rows.last().map_or(sub.cursor, |r| r.watermark);
    let cursor = if rows.len() >= limit {
        last
    } else {
        last.max(visible)
    };
    let prepared = rows
        .iter()
        .map(|row| PreparedRow::prepare(row, max_update_bytes))
        .collect();
    Ok((prepared, cursor))
}

/// The frame text of an update batch (rows' JSON spliced in, serialized once upstream).
fn batch_text(
    ch: &Channel,
    rows: &[Arc<PreparedRow>],
    replay_complete: bool,
    topic: Option<&str>,
) -> String {
    let size: usize = rows.iter().map(|r| r.json.len() + 1).sum();
    let mut payload = String::with_capacity(size + 128 + 64 * ch.topics.len());
    payload.push_str("{\"updates\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(&row.json);
    }
    payload.push_str("],\"replay_complete\":");
    payload.push_str(if replay_complete { "true" } else { "false" });
    payload.push_str(",\"head_watermarks\":");
    let heads: Vec<TopicWatermark> = if ch.khala_frame {
        ch.heads()
            .into_iter()
            .filter(|h| Some(h.topic.as_str()) == topic)
            .collect()
    } else {
        ch.heads()
    };
    payload.push_str(&serde_json::to_string(&heads).expect("watermarks serialize"));
    payload.push('}');
    let join_ref = serde_json::to_string(&ch.join_ref).expect("refs serialize");
    if ch.khala_frame {
        let seq = rows
            .last()
            .map_or_else(|| heads.first().map_or(0, |h| h.watermark), |r| r.watermark);
        let frame = KhalaFrame::new(
            topic.unwrap_or(""),
            seq,
            FrameKind::UpdateBatch,
            payload.as_bytes(),
        );
        let frame = serde_json::to_string(&frame).expect("frames serialize");
        return format!(
            "[{join_ref},null,\"{CHANNEL_TOPIC}\",\"{}\",{frame}]",
            event::SYNC_FRAME
        );
    }
    let mut text = String::with_capacity(payload.len() + 64);
    text.push('[');
    text.push_str(&join_ref);
    text.push_str(",null,\"");
    text.push_str(CHANNEL_TOPIC);
    text.push_str("\",\"");
    text.push_str(event::UPDATE_BATCH);
    text.push_str("\",");
    text.push_str(&payload);
    text.push(']');
    text
}

//! The per-socket state machine: Phoenix heartbeats, the `sync:v1` channel (join, subscribe,
//! unsubscribe, heartbeat, leave), and one delivery loop per socket that sends replay and live
//! updates alike (from each topic's cursor to the head, then wait for a wake-up).
//!
//! Generic over the socket's `Sink`/`Stream` so unit tests drive it with channels.
//!
//! # Layout
//! - this file: the session's state, its event loop and deadlines, sending frames, and access
//!   over time (token expiry, revocations).
//! - `inbound`: client frames: parsing and routing, join, unsubscribe, heartbeats, idle close.
//! - `subscribe`: `sync:subscribe` as three steps: validate the request, check the resume
//!   cursors for staleness, attach the topics (or re-aim those already attached).
//! - `delivery`: building one update batch fairly across topics, from memory or the source.
//! - `slow_consumer`: a client that does not read: blocked-queue tracking, strikes and notices.
//! - `bucket`: the subscribe rate limit.

mod bucket;
mod delivery;
mod inbound;
mod slow_consumer;
mod subscribe;
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
use crate::hub::FeedHandle;
use crate::protocol::{
    event, ErrorCode, Frame, FrameKind, KhalaFrame, SyncError, TopicWatermark, CHANNEL_TOPIC,
    PHOENIX_TOPIC,
};
use crate::source::OwnerFilter;
use bucket::TokenBucket;

/// Capacity of the priority lane (slow-consumer notices and Close frames).
const CONTROL_LANE: usize = 4;
/// How long a closing session waits for its writer to flush the Close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a closing session reads the client's last frames, waiting for its Close.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

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
                // The closing handshake (RFC 6455 §7.1.1): read what the client still sends,
                // briefly, until its Close or the end of the stream. A socket closed with
                // unread bytes is reset by the kernel, and the client could lose the frames
                // it was just sent (the error that explains the Close, the Close itself).
                let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                    while let Some(Ok(message)) = stream.next().await {
                        if matches!(message, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
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
}

//! Client frames: parsing and routing Phoenix frames, joining the `sync:v1` channel,
//! unsubscribing, heartbeats both ways, and closing an idle channel.

use axum::extract::ws::Message;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Channel, End, Session};
use crate::connection::{close_code, InboundError};
use crate::hub::Pulled;
use crate::protocol::{
    event, ErrorCode, Frame, HeartbeatPush, HeartbeatReply, JoinParams, JoinReply, SubscribeReply,
    SyncError, UnsubscribeRequest, CHANNEL_TOPIC, PHOENIX_TOPIC,
};

impl Session {
    /// Handles one item of the socket's stream: a frame, a close, or a read error.
    pub(super) async fn inbound(
        &mut self,
        item: Option<Result<Message, InboundError>>,
    ) -> Result<(), End> {
        match item {
            None | Some(Ok(Message::Close(_))) => Err(End::Gone),
            Some(Err(InboundError::TooLarge)) => self.too_large().await,
            Some(Ok(Message::Text(text)))
                if text.len() > self.gateway.config().max_inbound_frame_bytes =>
            {
                self.too_large().await
            }
            Some(Ok(Message::Binary(bytes)))
                if bytes.len() > self.gateway.config().max_inbound_frame_bytes =>
            {
                self.too_large().await
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

    /// A frame over `max_inbound_frame_bytes`: an error naming the limit, then Close 1009.
    async fn too_large(&mut self) -> Result<(), End> {
        let max = self.gateway.config().max_inbound_frame_bytes;
        let error = SyncError::new(
            ErrorCode::PayloadTooLarge,
            format!("frames from clients are limited to {max} bytes"),
        )
        .with("max_frame_bytes", max);
        let _ = self.push_error(&error, None).await;
        Err(End::Close(close_code::TOO_BIG, "frame too large"))
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

    /// Marks channel activity (the idle timer restarts).
    pub(super) fn touch(&mut self) {
        if let Some(ch) = &mut self.channel {
            ch.last_activity = Instant::now();
        }
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

    /// The server's periodic heartbeat push with the channel's watermarks.
    pub(super) async fn heartbeat_push(&mut self) -> Result<(), End> {
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

    /// Closes an idle channel (`phx_close`); the socket stays open.
    pub(super) async fn close_channel(&mut self) -> Result<(), End> {
        tracing::debug!(session = self.id, "closing idle channel");
        self.push_phx_close().await?;
        self.channel = None;
        Ok(())
    }
}

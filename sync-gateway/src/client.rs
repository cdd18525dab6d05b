//! A Khala client over tokio-tungstenite: connects with `vsn=2.0.0`, speaks Phoenix v2 frames,
//! correlates replies by ref, and decodes pushes (`sync:update_batch`, `sync:frame`,
//! `sync:heartbeat`, `sync:error`, `phx_close`). Used by the watch command, tests and the bench.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{
    event, Frame, FrameKind, HeartbeatPush, JoinReply, KhalaFrame, SubscribeReply, SyncError,
    UpdateBatch, CHANNEL_TOPIC, PHOENIX_TOPIC, PHOENIX_VSN, PROTOCOL_VERSION,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The upgrade was refused (403 bad token, 503 over capacity, …).
    #[error("connection refused with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the server closed the connection ({0:?})")]
    Closed(Option<(u16, String)>),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for the server")]
    Timeout,
}

impl ClientError {
    /// The `code` of a refused upgrade's JSON body, if any.
    pub fn refusal_code(&self) -> Option<String> {
        match self {
            ClientError::Refused { body, .. } => serde_json::from_str::<Value>(body)
                .ok()?
                .pointer("/error/code")?
                .as_str()
                .map(str::to_owned),
            _ => None,
        }
    }
}

/// Something the server pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// `sync:update_batch`, or a decoded `sync:frame` update batch (`frame_seq` set).
    Batch {
        batch: UpdateBatch,
        frame_seq: Option<u64>,
    },
    Heartbeat(HeartbeatPush),
    /// `sync:error`, or a decoded `sync:frame` error.
    Error(SyncError),
    /// `phx_close` on the channel.
    ChannelClosed,
    /// A reply nobody waited for, or any other frame.
    Other(Frame),
}

/// A reply: `Ok(response)` for status ok, `Err(error)` for status error.
pub type Reply = Result<Value, SyncError>;

/// Builds the socket URL: `base` is `http(s)://host:port` or `ws(s)://host:port`.
pub fn socket_url(base: &str, token: &str, extra: &[(&str, &str)]) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_owned()
    };
    let mut url = format!(
        "{base}/sync/socket/websocket?token={}&vsn={PHOENIX_VSN}",
        encode(token)
    );
    for (key, value) in extra {
        url.push('&');
        url.push_str(&encode(key));
        url.push('=');
        url.push_str(&encode(value));
    }
    url
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The default compatibility parameters a client announces.
pub fn compat_params() -> Vec<(&'static str, &'static str)> {
    vec![
        ("client", "openagents-runtime-watch"),
        ("protocol_version", PROTOCOL_VERSION),
        ("schema_version", "1"),
    ]
}

/// One connection.
pub struct KhalaClient {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    next_ref: u64,
    join_ref: Option<String>,
    /// Frames that arrived while waiting for a reply.
    buffered: VecDeque<Frame>,
    timeout: Duration,
}

impl KhalaClient {
    /// Connects to a full socket URL (see [`socket_url`]).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the HTTP status when the upgrade is refused.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 20));
        let (ws, _) =
            match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
                Ok(ok) => ok,
                Err(tungstenite::Error::Http(response)) => {
                    let status = response.status().as_u16();
                    let body = response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    return Err(ClientError::Refused { status, body });
                }
                Err(e) => return Err(e.into()),
            };
        let (sink, stream) = ws.split();
        Ok(Self {
            sink,
            stream,
            next_ref: 1,
            join_ref: None,
            buffered: VecDeque::new(),
            timeout: Duration::from_secs(30),
        })
    }

    /// How long request/receive helpers wait (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn join_ref(&self) -> Option<&str> {
        self.join_ref.as_deref()
    }

    /// Sends raw text (for garbage-frame tests).
    ///
    /// # Errors
    /// Socket failures.
    pub async fn send_raw(&mut self, message: Message) -> Result<(), ClientError> {
        self.sink.send(message).await?;
        Ok(())
    }

    /// Sends a frame and returns its ref.
    ///
    /// # Errors
    /// Socket failures.
    pub async fn push(
        &mut self,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<String, ClientError> {
        let msg_ref = self.next_ref.to_string();
        self.next_ref += 1;
        let join_ref = if topic == PHOENIX_TOPIC {
            None
        } else {
            self.join_ref.clone()
        };
        let frame = Frame {
            join_ref,
            msg_ref: Some(msg_ref.clone()),
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        };
        self.sink.send(Message::text(frame.to_json())).await?;
        Ok(msg_ref)
    }

    /// Sends a frame and waits for its `phx_reply` (other frames are buffered).
    ///
    /// # Errors
    /// Socket failures, timeouts, or a reply without status.
    pub async fn request(
        &mut self,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<Reply, ClientError> {
        let msg_ref = self.push(topic, event, payload).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .map_err(|_| ClientError::Timeout)??;
            if frame.event == event::REPLY && frame.msg_ref.as_deref() == Some(msg_ref.as_str()) {
                let (status, response) = frame.reply_parts().ok_or_else(|| {
                    ClientError::Protocol(format!("reply without status: {}", frame.to_json()))
                })?;
                return Ok(if status == "ok" {
                    Ok(response.clone())
                } else {
                    Err(serde_json::from_value(response.clone()).map_err(|e| {
                        ClientError::Protocol(format!("error reply without code: {e}: {response}"))
                    })?)
                });
            }
            self.buffered.push_back(frame);
        }
    }

    /// Joins `sync:v1` with `params`.
    ///
    /// # Errors
    /// Transport errors; `Ok(Err(..))` for an error reply.
    pub async fn join(
        &mut self,
        params: Value,
    ) -> Result<Result<JoinReply, SyncError>, ClientError> {
        let msg_ref = self.next_ref.to_string();
        self.join_ref = Some(msg_ref);
        let reply = self.request(CHANNEL_TOPIC, event::JOIN, params).await?;
        Ok(match reply {
            Ok(value) => {
                Ok(serde_json::from_value(value)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?)
            }
            Err(e) => Err(e),
        })
    }

    /// `sync:subscribe`.
    ///
    /// # Errors
    /// Transport errors; `Ok(Err(..))` for an error reply.
    pub async fn subscribe(
        &mut self,
        payload: Value,
    ) -> Result<Result<SubscribeReply, SyncError>, ClientError> {
        let reply = self
            .request(CHANNEL_TOPIC, event::SUBSCRIBE, payload)
            .await?;
        Ok(match reply {
            Ok(value) => {
                Ok(serde_json::from_value(value)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?)
            }
            Err(e) => Err(e),
        })
    }

    /// `sync:subscribe` for topics with `resume_after` watermarks (None: from the head).
    ///
    /// # Errors
    /// As [`KhalaClient::subscribe`].
    pub async fn subscribe_from(
        &mut self,
        topics: &[(&str, Option<u64>)],
    ) -> Result<Result<SubscribeReply, SyncError>, ClientError> {
        let names: Vec<&str> = topics.iter().map(|(t, _)| *t).collect();
        let resume: serde_json::Map<String, Value> = topics
            .iter()
            .filter_map(|(t, wm)| wm.map(|wm| ((*t).to_owned(), json!(wm))))
            .collect();
        let mut payload = json!({ "topics": names });
        if !resume.is_empty() {
            payload["resume_after"] = Value::Object(resume);
        }
        self.subscribe(payload).await
    }

    /// Sends a Phoenix heartbeat and waits for its reply.
    ///
    /// # Errors
    /// Transport errors and timeouts.
    pub async fn phoenix_heartbeat(&mut self) -> Result<Reply, ClientError> {
        self.request(PHOENIX_TOPIC, event::HEARTBEAT, json!({}))
            .await
    }

    async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            match self.stream.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    return Frame::parse(text.as_str())
                        .map_err(|e| ClientError::Protocol(e.to_string()))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ))
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame (buffered ones first), within the timeout.
    ///
    /// # Errors
    /// [`ClientError::Closed`] with the close code when the server closed; timeouts.
    pub async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        if let Some(frame) = self.buffered.pop_front() {
            return Ok(frame);
        }
        tokio::time::timeout(self.timeout, self.read_frame())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// The next push, decoded.
    ///
    /// # Errors
    /// As [`KhalaClient::next_frame`], plus undecodable payloads.
    pub async fn next_push(&mut self) -> Result<Push, ClientError> {
        let frame = self.next_frame().await?;
        decode_push(frame)
    }

    /// The next update batch, skipping heartbeats; an error push becomes `Err(Protocol)`.
    ///
    /// # Errors
    /// As [`KhalaClient::next_push`].
    pub async fn next_batch(&mut self) -> Result<UpdateBatch, ClientError> {
        loop {
            match self.next_push().await? {
                Push::Batch { batch, .. } => return Ok(batch),
                Push::Heartbeat(_) => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected an update batch, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
        let _ = self.sink.close().await;
    }
}

/// Decodes a pushed frame.
///
/// # Errors
/// [`ClientError::Protocol`] for payloads that do not match their event.
pub fn decode_push(frame: Frame) -> Result<Push, ClientError> {
    let bad = |e: &dyn std::fmt::Display| {
        ClientError::Protocol(format!("bad {} payload: {e}", frame.event))
    };
    Ok(match frame.event.as_str() {
        event::UPDATE_BATCH => Push::Batch {
            batch: serde_json::from_value(frame.payload.clone()).map_err(|e| bad(&e))?,
            frame_seq: None,
        },
        event::SYNC_HEARTBEAT => {
            Push::Heartbeat(serde_json::from_value(frame.payload.clone()).map_err(|e| bad(&e))?)
        }
        event::SYNC_ERROR => {
            Push::Error(serde_json::from_value(frame.payload.clone()).map_err(|e| bad(&e))?)
        }
        event::SYNC_FRAME => {
            let envelope: KhalaFrame =
                serde_json::from_value(frame.payload.clone()).map_err(|e| bad(&e))?;
            let bytes = envelope.payload().map_err(|e| bad(&e))?;
            match envelope.kind {
                FrameKind::UpdateBatch => Push::Batch {
                    batch: serde_json::from_slice(&bytes).map_err(|e| bad(&e))?,
                    frame_seq: Some(envelope.seq),
                },
                FrameKind::Error => {
                    Push::Error(serde_json::from_slice(&bytes).map_err(|e| bad(&e))?)
                }
            }
        }
        event::CLOSE if frame.topic == CHANNEL_TOPIC => Push::ChannelClosed,
        _ => Push::Other(frame),
    })
}

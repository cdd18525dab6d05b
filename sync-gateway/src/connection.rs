//! One socket's I/O: the outbound writer (a bounded data queue plus a small priority lane for
//! control frames, written in order and flushed in bursts) and the inbound error type.
//!
//! The session produces frames; the writer task owns the sink. When the client stops reading,
//! the sink blocks, the data queue fills, and the session sees it (slow consumer) without ever
//! blocking other sessions.

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt};
use tokio::sync::{mpsc, Notify};

/// Bytes of text frames queued for the writer and not yet written: the data queue is bounded by
/// bytes as well as by frames (a 32-frame queue of 2 MiB batches would otherwise hold 64 MiB per
/// socket). The session adds before queueing; the writer subtracts after writing and wakes the
/// session when the queue drains below the limit.
#[derive(Debug)]
pub struct QueuedBytes {
    bytes: AtomicUsize,
    limit: usize,
    drained: Arc<Notify>,
}

impl QueuedBytes {
    pub fn new(limit: usize, drained: Arc<Notify>) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            limit: limit.max(1),
            drained,
        }
    }

    /// Whether another data frame may be queued now.
    pub fn has_room(&self) -> bool {
        self.bytes.load(Ordering::Acquire) < self.limit
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Accounts for a frame about to be queued and returns it.
    pub fn text(&self, text: String) -> Outbound {
        self.stamped(text, None)
    }

    /// [`QueuedBytes::text`] for an update batch timed by the stage histograms.
    pub fn stamped(&self, text: String, stamp: Option<Stamp>) -> Outbound {
        self.bytes.fetch_add(text.len(), Ordering::AcqRel);
        Outbound::Text(text.into(), stamp)
    }

    fn written(&self, len: usize) {
        let before = self.bytes.fetch_sub(len, Ordering::AcqRel);
        if before >= self.limit && before - len < self.limit {
            self.drained.notify_one();
        }
    }
}

/// A sampled update batch's stage times: when the tailer read its oldest row, and when the
/// session queued it. The writer records read → socket and queued → socket after the flush.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub read_at: Instant,
    pub queued_at: Instant,
}

/// What the writer sends.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame, with stage times when sampled.
    Text(Utf8Bytes, Option<Stamp>),
    /// Sends a Close frame and ends the writer.
    Close(u16, &'static str),
}

/// WebSocket close codes the gateway uses.
pub mod close_code {
    /// Normal closure (idle socket).
    pub const NORMAL: u16 = 1000;
    /// Going away: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: the token expired or the session was revoked.
    pub const POLICY: u16 = 1008;
    /// Message too big: a client frame exceeded the inbound limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error: the sync source failed.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: slow consumer disconnect.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why reading the socket failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("frame larger than the inbound limit")]
    TooLarge,
    #[error("websocket error: {0}")]
    Protocol(String),
}

impl InboundError {
    /// Classifies an axum WebSocket read error.
    pub fn from_axum(error: axum::Error) -> Self {
        let inner = error.into_inner();
        match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) => InboundError::TooLarge,
            _ => InboundError::Protocol(inner.to_string()),
        }
    }
}

/// Frames written per flush at most (a burst of queued frames goes out in one write).
const BURST: usize = 64;

/// Writes queued frames until both queues close or a Close is sent.
///
/// # Errors
/// The sink's error text when the socket fails; the session then ends.
pub async fn write_loop<S>(
    mut sink: S,
    mut data: mpsc::Receiver<Outbound>,
    mut control: mpsc::Receiver<Outbound>,
    queued: Arc<QueuedBytes>,
) -> Result<(), String>
where
    S: Sink<Message> + Unpin,
    S::Error: Display,
{
    loop {
        let first = tokio::select! {
            biased;
            Some(out) = control.recv() => out,
            Some(out) = data.recv() => out,
            else => return Ok(()),
        };
        let mut next = Some(first);
        let mut fed = 0;
        let mut started: Option<Instant> = None;
        let mut stamps: Vec<Stamp> = Vec::new();
        while let Some(out) = next.take() {
            match out {
                Outbound::Text(text, stamp) => {
                    if let Some(stamp) = stamp {
                        started.get_or_insert_with(Instant::now);
                        stamps.push(stamp);
                    }
                    let len = text.len();
                    sink.feed(Message::Text(text))
                        .await
                        .map_err(|e| e.to_string())?;
                    queued.written(len);
                    fed += 1;
                }
                Outbound::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        })))
                        .await;
                    return Ok(());
                }
            }
            if fed < BURST {
                next = control.try_recv().ok().or_else(|| data.try_recv().ok());
            }
        }
        sink.flush().await.map_err(|e| e.to_string())?;
        if let Some(started) = started {
            record_written(started, &stamps);
        }
    }
}

/// Stage timings of a burst that held sampled update batches, once flushed: the write itself
/// (feed to flush), and each batch's tailer read → socket and session queue → socket.
fn record_written(started: Instant, stamps: &[Stamp]) {
    let now = Instant::now();
    metrics::histogram!("runtime_sync_socket_write_seconds")
        .record(now.duration_since(started).as_secs_f64());
    let to_socket = metrics::histogram!("runtime_sync_tail_to_socket_seconds");
    let queue = metrics::histogram!("runtime_sync_queue_to_socket_seconds");
    for stamp in stamps {
        to_socket.record(now.saturating_duration_since(stamp.read_at).as_secs_f64());
        queue.record(now.saturating_duration_since(stamp.queued_at).as_secs_f64());
    }
}

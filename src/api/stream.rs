//! Server-Sent Events for run and worker streams: cursor resolution (`Last-Event-ID` or
//! `?cursor=`), the `tail_ms` window, the retention floor, and one producer task per stream that
//! replays from the cursor, then waits for journal notifications (with a fallback poll).
//!
//! Each producer runs on the app's task tracker and selects on the shutdown token, so shutdown
//! ends every stream cleanly and waits for it. A client that disconnects closes the channel and
//! the producer returns at its next send or wait.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::api::error::{ApiError, ErrorCode};
use crate::app::App;
use crate::config::HttpConfig;

/// One event of a `text/event-stream` body as a client parses it: the schema the OpenAPI document
/// gives stream responses. `data` is the event's JSON (or `[DONE]` at the end of a terminal
/// run's stream); keep-alive comments carry no event.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// `run.event` or `codex.worker.event` (`message` for `[DONE]`).
    pub event: Option<String>,
    /// The event's seq.
    pub id: Option<String>,
    pub data: String,
}

/// The stream routes' `Last-Event-ID` header, for the document ([`resolve_start`] reads it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct LastEventId {
    /// Resume after this seq (same as `?cursor=`; both must agree when both are sent).
    #[param(rename = "Last-Event-ID", value_type = Option<u64>)]
    pub last_event_id: Option<String>,
}

/// How often a waiting stream re-reads the journal even without a notification (notifications
/// are wake-ups only and can be lost, e.g. between processes on one SQLite file).
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Events buffered between the producer and the HTTP body.
const CHANNEL_CAPACITY: usize = 64;
/// Journal events one read of a stream's source takes: a stream of a long history is read
/// (and held) a page at a time, the next page only once the client has taken the previous.
pub const PAGE_EVENTS: usize = 256;

/// Where a stream starts and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamStart {
    /// Emit events with `seq > after`.
    pub after: u64,
    /// How long to wait for new events once caught up.
    pub tail: Duration,
}

fn parse_cursor(value: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| {
        ApiError::invalid("cursor must be an integer >= 0")
            .with_details(json!({ "field": "cursor" }))
    })
}

/// Applies the contract's cursor rules: `Last-Event-ID` and `?cursor=` must agree when both are
/// present; with neither, start at `latest_seq`; a cursor below the retention floor is `410`;
/// `tail_ms` must be a positive integer no larger than the configured maximum.
///
/// # Errors
/// `400 invalid_request` or `410 stale_cursor`.
pub fn resolve_start(
    query_cursor: Option<&str>,
    headers: &HeaderMap,
    tail_ms: Option<&str>,
    latest_seq: u64,
    config: &HttpConfig,
) -> Result<StreamStart, ApiError> {
    let query = query_cursor.map(parse_cursor).transpose()?;
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid("Last-Event-ID must be an integer >= 0"))
                .and_then(parse_cursor)
        })
        .transpose()?;
    let cursor = match (query, header) {
        (Some(q), Some(h)) if q != h => {
            return Err(
                ApiError::invalid("cursor query and Last-Event-ID must match").with_details(
                    json!({ "reason": "cursor_mismatch", "cursor": q, "last_event_id": h }),
                ),
            )
        }
        (Some(c), _) | (None, Some(c)) => Some(c),
        (None, None) => None,
    };
    let tail = match tail_ms {
        None => config.stream_tail_default,
        Some(raw) => {
            let max = config.stream_tail_max.as_millis() as u64;
            match raw.trim().parse::<u64>() {
                Ok(ms) if ms > 0 && ms <= max => Duration::from_millis(ms),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "tail_ms must be a positive integer no larger than {max}"
                    ))
                    .with_details(json!({ "field": "tail_ms" })))
                }
            }
        }
    };
    let after = match cursor {
        None => latest_seq,
        Some(cursor) => {
            let floor = config
                .stream_replay_window
                .map(|window| latest_seq.saturating_sub(window))
                .unwrap_or(0);
            if cursor < floor {
                return Err(ApiError::new(
                    axum::http::StatusCode::GONE,
                    ErrorCode::StaleCursor,
                    "cursor is older than retention floor",
                )
                .with_details(json!({
                    "cursor": cursor,
                    "retention_floor": floor,
                    "latest_seq": latest_seq,
                    "full_resync_required": true,
                })));
            }
            cursor
        }
    };
    Ok(StreamStart { after, tail })
}

/// What one read of the stream's source returned.
pub struct Batch {
    /// `(seq, event)` in seq order, all with seq greater than the cursor passed in.
    pub events: Vec<(u64, Event)>,
    /// The read filled its page: more may follow at once, read from `resume` without waiting.
    /// A full page can hold no client-visible event at all (internal events are skipped), so
    /// the cursor to continue from is said here, not inferred from `events`.
    pub more: Option<u64>,
    /// The source is finished (a terminal run) and nothing more follows: after these events,
    /// send `[DONE]` and close.
    pub done: bool,
}

/// Starts a stream: a producer task on the app's tracker reading through `fetch(after_seq)`,
/// woken by journal notifications for `(aggregate_type, aggregate_id)`.
pub fn sse<F, Fut>(
    app: &App,
    aggregate_type: &'static str,
    aggregate_id: String,
    start: StreamStart,
    mut fetch: F,
) -> Response
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Batch, ApiError>> + Send,
{
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(CHANNEL_CAPACITY);
    // Subscribe before the first read so no append between read and wait goes unnoticed.
    let mut changes = app.notifier().subscribe();
    let shutdown = app.shutdown_token().clone();
    metrics::gauge!("runtime_sse_streams", "aggregate" => aggregate_type).increment(1.0);
    // A child of the request's span, so the stream's logs carry the request and trace ids.
    let span = tracing::info_span!("runtime.stream", aggregate = aggregate_type, aggregate_id = %aggregate_id, after = start.after);
    let producer = async move {
        let deadline = Instant::now() + start.tail;
        let mut cursor = start.after;
        'stream: loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break 'stream,
                batch = fetch(cursor) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    let data = json!({ "code": error.code, "message": error.message });
                    let _ = tx
                        .send(Ok(Event::default().event("error").data(data.to_string())))
                        .await;
                    break 'stream;
                }
            };
            for (seq, event) in batch.events {
                if tx.send(Ok(event)).await.is_err() {
                    break 'stream;
                }
                cursor = seq;
            }
            if let Some(resume) = batch.more {
                cursor = cursor.max(resume);
                continue 'stream;
            }
            if batch.done {
                let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
                break 'stream;
            }
            // Caught up: wait for a relevant notification, the fallback poll, the tail deadline,
            // shutdown or the client going away.
            let poll = tokio::time::sleep(FALLBACK_POLL);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'stream,
                    _ = tokio::time::sleep_until(deadline) => break 'stream,
                    _ = tx.closed() => break 'stream,
                    _ = &mut poll => break,
                    change = changes.recv() => match change {
                        Ok(change) if change.concerns(aggregate_type, &aggregate_id) => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => break 'stream,
                    },
                }
            }
        }
        metrics::gauge!("runtime_sse_streams", "aggregate" => aggregate_type).decrement(1.0);
    };
    app.tracker().spawn(producer.instrument(span));
    let mut response = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HttpConfig {
        HttpConfig {
            stream_replay_window: Some(10),
            ..HttpConfig::default()
        }
    }

    fn headers(last_event_id: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(id) = last_event_id {
            h.insert("last-event-id", id.parse().unwrap());
        }
        h
    }

    #[test]
    fn cursor_rules_follow_the_contract() {
        let c = config();
        let start = |q: Option<&str>, h: Option<&str>, latest| {
            resolve_start(q, &headers(h), None, latest, &c)
        };
        assert_eq!(start(None, None, 7).unwrap().after, 7, "latest by default");
        assert_eq!(start(Some("3"), None, 7).unwrap().after, 3);
        assert_eq!(start(None, Some("4"), 7).unwrap().after, 4);
        assert_eq!(start(Some("5"), Some("5"), 7).unwrap().after, 5);
        let mismatch = start(Some("5"), Some("6"), 7).unwrap_err();
        assert_eq!(mismatch.status, 400);
        assert_eq!(start(Some("-1"), None, 7).unwrap_err().status, 400);
        assert_eq!(start(None, Some("x"), 7).unwrap_err().status, 400);
        let stale = start(Some("4"), None, 15).unwrap_err();
        assert_eq!(stale.status, 410);
        assert_eq!(stale.code, ErrorCode::StaleCursor);
        assert_eq!(stale.details["retention_floor"], 5);
        assert_eq!(
            start(Some("5"), None, 15).unwrap().after,
            5,
            "the floor itself is fine"
        );
    }

    #[test]
    fn tail_ms_must_be_a_positive_integer_within_the_maximum() {
        let c = config();
        let tail = |t| resolve_start(None, &headers(None), Some(t), 0, &c);
        assert_eq!(tail("250").unwrap().tail, Duration::from_millis(250));
        for bad in ["0", "-5", "abc", "1.5", "999999999999"] {
            assert_eq!(tail(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            resolve_start(None, &headers(None), None, 0, &c)
                .unwrap()
                .tail,
            c.stream_tail_default
        );
    }
}

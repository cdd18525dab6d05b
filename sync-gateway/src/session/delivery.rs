//! Delivery: one update batch per reserved queue slot, fair across the channel's topics, each
//! topic pulled from its tailer's memory when that covers the cursor, else replayed from the
//! source; a topic whose cursor fell below what replay can serve is dropped as stale.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{Channel, End, Session, TopicSub};
use crate::connection::{close_code, Outbound, Stamp};
use crate::gateway::Gateway;
use crate::hub::{PreparedRow, Pulled};
use crate::protocol::{
    event, ErrorCode, FrameKind, KhalaFrame, StaleReason, StaleTopic, SyncError, TopicWatermark,
    CHANNEL_TOPIC,
};
use crate::source::{OwnerFilter, SourceError};

/// Update objects to splice into a batch: one prepared row (from the tailer's memory, or a page
/// read row by row), or a page of rows the source joined (a replay through the store).
enum Piece {
    Row(Arc<PreparedRow>),
    Joined {
        json: String,
        rows: usize,
        /// The last row's watermark.
        last: u64,
    },
}

impl Piece {
    fn json(&self) -> &str {
        match self {
            Piece::Row(row) => &row.json,
            Piece::Joined { json, .. } => json,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Piece::Row(_) => 1,
            Piece::Joined { rows, .. } => *rows,
        }
    }

    /// The watermark of the piece's last row.
    fn watermark(&self) -> u64 {
        match self {
            Piece::Row(row) => row.watermark,
            Piece::Joined { last, .. } => *last,
        }
    }

    fn read_at(&self) -> Option<Instant> {
        match self {
            Piece::Row(row) => row.read_at,
            Piece::Joined { .. } => None,
        }
    }
}

/// Why pulling a topic failed.
enum PullError {
    Stale(StaleTopic),
    Source(SourceError),
}

impl Session {
    /// Builds and queues one batch (fair across topics), using the reserved queue slot.
    pub(super) async fn deliver(&mut self, permit: mpsc::OwnedPermit<Outbound>) -> Result<(), End> {
        let started = Instant::now();
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
        let mut batch: Vec<Piece> = Vec::new();
        let mut batch_rows = 0usize;
        let mut bytes = 0usize;
        let mut stale: Vec<(usize, StaleTopic)> = Vec::new();
        let mut source_failed = false;
        let mut replica_down = false;
        for &i in &order {
            if batch_rows >= limit || bytes >= max_bytes {
                break;
            }
            let want = quota.min(limit - batch_rows);
            let sub = &mut ch.topics[i];
            let room = max_bytes - bytes;
            match pull(
                &gateway,
                &*sub,
                &filter,
                want,
                config.max_update_bytes,
                room,
            )
            .await
            {
                Ok((pieces, all_cursor)) => {
                    let mut all_taken = true;
                    let mut taken_through = None;
                    for piece in pieces {
                        let len = piece.json().len() + 1;
                        if !batch.is_empty() && bytes + len > max_bytes {
                            all_taken = false;
                            break;
                        }
                        bytes += len;
                        batch_rows += piece.rows();
                        taken_through = Some(piece.watermark());
                        batch.push(piece);
                    }
                    sub.cursor = match taken_through {
                        _ if all_taken => all_cursor.max(sub.cursor),
                        Some(watermark) => watermark,
                        None => sub.cursor,
                    };
                }
                Err(PullError::Stale(topic)) => stale.push((i, topic)),
                Err(PullError::Source(SourceError::ReplicaUnavailable(e))) => {
                    tracing::debug!(error.message = %e, "read replica unavailable during delivery; the session waits");
                    replica_down = true;
                    break;
                }
                Err(PullError::Source(e)) => {
                    tracing::error!(error.message = %e, error.cause_chain = ?e, "sync source failed during delivery");
                    source_failed = true;
                    break;
                }
            }
        }
        if replica_down && batch.is_empty() {
            // The replica is down or restarting: keep the socket, send nothing, and try again
            // after a pause (the loop still answers the client in between). Cursors did not
            // move, so the session resumes exactly where it stopped.
            drop(permit);
            tokio::time::sleep(REPLICA_RETRY).await;
            return Ok(());
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
            sent_rows = batch_rows;
            let stamp = self.stage_stamp(&batch, started);
            permit.send(self.queued.stamped(text, stamp));
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

/// One session in this many times its live deliveries (`runtime_sync_tail_to_*`), so the
/// stage histograms cost a few records per row, not one per delivery.
const STAGE_SAMPLE: u64 = 8;

impl Session {
    /// For a sampled session, records the tailer read → queued time of the batch's oldest live
    /// row and the delivery's own time (pull and frame build, from `started`), and returns the
    /// stamp the writer finishes.
    fn stage_stamp(&self, batch: &[Piece], started: Instant) -> Option<Stamp> {
        if self.id % STAGE_SAMPLE != 0 {
            return None;
        }
        let read_at = batch.iter().find_map(Piece::read_at)?;
        let queued_at = Instant::now();
        metrics::histogram!("runtime_sync_tail_to_queue_seconds")
            .record(queued_at.saturating_duration_since(read_at).as_secs_f64());
        metrics::histogram!("runtime_sync_deliver_seconds")
            .record(queued_at.saturating_duration_since(started).as_secs_f64());
        Some(Stamp { read_at, queued_at })
    }
}

/// How long a session whose replay needs an unreachable replica waits before it tries again.
const REPLICA_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a session pauses when its source shows nothing past its cursor although its tailer
/// has read further (a replica restarted behind where it was, catching up).
const BEHIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Rows of `sub` after its cursor (from memory when it covers the cursor, else from the
/// source: a joined page when the source builds one and it fits in `room` bytes, else row by
/// row) and the cursor to move to if all are delivered.
async fn pull(
    gateway: &Gateway,
    sub: &TopicSub,
    filter: &OwnerFilter,
    limit: usize,
    max_update_bytes: usize,
    room: usize,
) -> Result<(Vec<Piece>, u64), PullError> {
    let tailer = sub.handle.tailer();
    if let Pulled::Rows { rows, cursor } = tailer.pull(sub.handle.feed(), sub.cursor, limit) {
        if !rows.is_empty() || cursor >= sub.target {
            return Ok((rows.into_iter().map(Piece::Row).collect(), cursor));
        }
    }
    // Replay from the source. A short page covers everything up to the head of the snapshot it
    // was read in, and no further: not the tailer's tail nor the replay target, which earlier
    // reads saw. A replica restarted behind where it was may not show those yet, and moving
    // past them would skip rows (docs/adr/0125-read-replicas.md).
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
    match source
        .read_stream_joined(&sub.topic, sub.cursor, limit, filter, max_update_bytes)
        .await
    {
        // The source checks the floor in the page's own snapshot: no second read.
        Ok(Some(page)) if page.json.len() < room => {
            let last = (page.rows > 0).then_some(page.last_watermark);
            let cursor = page_end(sub.cursor, page.rows, limit, last, page.head_watermark).await;
            if page.rows == 0 {
                return Ok((Vec::new(), cursor));
            }
            let piece = Piece::Joined {
                json: page.json,
                rows: page.rows,
                last: page.last_watermark,
            };
            return Ok((vec![piece], cursor));
        }
        Ok(_) => {}
        Err(SourceError::Stale { state }) => return Err(stale(&state)),
        Err(e) => return Err(PullError::Source(e)),
    }
    let page = match source
        .read_stream_page(&sub.topic, sub.cursor, limit, filter)
        .await
    {
        Ok(page) => page,
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
    let rows = page.rows;
    let last = rows.last().map(|r| r.watermark);
    let cursor = page_end(sub.cursor, rows.len(), limit, last, page.head_watermark).await;
    let prepared = rows
        .iter()
        .map(|row| Piece::Row(PreparedRow::prepare(row, max_update_bytes)))
        .collect();
    Ok((prepared, cursor))
}

/// Where a source page of `rows` (of at most `limit`, the last at `last`) read after `after`
/// leaves the cursor once delivered: at its last row when full, else at the head of the
/// snapshot it was read in. An empty page that shows nothing past `after` (a replica catching up
/// after a restart, behind what this node has seen) pauses briefly first, so a session does not
/// spin on reads.
async fn page_end(after: u64, rows: usize, limit: usize, last: Option<u64>, head: u64) -> u64 {
    let last = last.unwrap_or(after);
    let cursor = if rows >= limit { last } else { last.max(head) };
    if rows == 0 && cursor <= after {
        tokio::time::sleep(BEHIND_PAUSE).await;
    }
    cursor
}

/// The frame text of an update batch (rows' JSON spliced in, serialized once upstream).
fn batch_text(ch: &Channel, rows: &[Piece], replay_complete: bool, topic: Option<&str>) -> String {
    let size: usize = rows.iter().map(|r| r.json().len() + 1).sum();
    let mut payload = String::with_capacity(size + 128 + 64 * ch.topics.len());
    payload.push_str("{\"updates\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(row.json());
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
        let seq = rows.last().map_or_else(
            || heads.first().map_or(0, |h| h.watermark),
            Piece::watermark,
        );
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

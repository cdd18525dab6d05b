//! Slow consumers: a client whose queue stays full while updates wait is struck; each strike
//! sends a notice on the priority lane, and too many strikes disconnect it.

use serde_json::Value;
use tokio::time::Instant;

use super::{End, Session};
use crate::connection::close_code;
use crate::protocol::error::{SlowConsumer, SlowConsumerAction};
use crate::protocol::SyncError;

impl Session {
    fn queue_depth(&self) -> usize {
        self.queue_limit - self.data_tx.capacity()
    }

    /// Notes since when the queue has been full while updates were waiting (the strike timer
    /// runs from then); an emptied queue forgives earlier strikes.
    pub(super) fn track_blocked(&mut self, pending: bool) {
        if self.queue_depth() == 0 {
            self.strikes = 0;
        }
        if pending && (self.data_tx.capacity() == 0 || !self.queued.has_room()) {
            self.blocked_since.get_or_insert_with(Instant::now);
        } else {
            self.blocked_since = None;
        }
    }

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

    /// The queue stayed full for the grace period: a throttle notice, or after too many strikes
    /// a disconnect.
    pub(super) fn strike(&mut self) -> Result<(), End> {
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
}

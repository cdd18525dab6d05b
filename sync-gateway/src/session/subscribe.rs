//! `sync:subscribe` in three steps: validate the request (rate, shape, bounds, scopes) before
//! any store read, refuse resume cursors that replay cannot serve (staleness), then attach the
//! topics: new ones get a feed registration, ones already attached are re-aimed, and every topic
//! replays from its cursor up to the head read now.

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{End, Session, TopicSub};
use crate::gateway::Gateway;
use crate::protocol::{
    ErrorCode, Frame, StaleReason, StaleTopic, SubscribeReply, SubscribeRequest, SyncError,
};
use crate::source::{SourceError, TopicState};

/// A validated `sync:subscribe`.
struct SubscribePlan {
    /// The requested topics, deduplicated, in request order.
    topics: Vec<String>,
    /// Where the client resumes each topic it names (the others start live, at the head).
    resume: Vec<(String, u64)>,
    /// The replay batch size asked for (capped), if any.
    batch_size: Option<usize>,
    request_id: Option<Value>,
}

impl SubscribePlan {
    fn resume_at(&self, topic: &str) -> Option<u64> {
        self.resume
            .iter()
            .find(|(t, _)| t == topic)
            .map(|&(_, cursor)| cursor)
    }
}

impl Session {
    /// Handles `sync:subscribe`; a refusal at any step is the reply.
    pub(super) async fn subscribe(&mut self, frame: &Frame) -> Result<(), End> {
        self.touch();
        let plan = match self.validate_subscribe(frame) {
            Ok(plan) => plan,
            Err(error) => return self.reply_error(frame, &error).await,
        };
        let states = match fresh_topic_states(&self.gateway, &plan).await {
            Ok(states) => states,
            Err(error) => return self.reply_error(frame, &error).await,
        };
        let reply = self.attach(plan, &states);
        self.reply_ok(frame, json!(reply)).await
    }

    /// Checks a subscribe against the rate limit, its shape, the topic bounds and the token's
    /// scopes, before any per-topic work touches the store.
    fn validate_subscribe(&mut self, frame: &Frame) -> Result<SubscribePlan, SyncError> {
        if let Err(retry_after) = self.bucket.take(Instant::now()) {
            let ms = u64::try_from(retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            return Err(SyncError::rate_limited(ms));
        }
        let bad = |message: String| SyncError::new(ErrorCode::BadSubscription, message);
        let request: SubscribeRequest = serde_json::from_value(frame.payload.clone())
            .map_err(|e| bad(format!("bad sync:subscribe payload: {e}")))?;
        let config = self.gateway.config();
        let too_many = || {
            bad(format!(
                "a subscription holds at most {} topics",
                config.max_topics_per_subscription
            ))
            .with("max_topics", config.max_topics_per_subscription)
        };
        // Bounded before any per-topic work (dedup, scope checks, resume pairs, store reads): a
        // hostile frame of thousands of topic names costs one length check.
        let resume_len = request.resume_after.as_ref().map_or(0, |r| r.len());
        if request.topics.len() > config.max_topics_per_subscription
            || resume_len > config.max_topics_per_subscription
        {
            return Err(too_many());
        }
        let mut topics: Vec<String> = Vec::new();
        for topic in &request.topics {
            if !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        if topics.is_empty() {
            return Err(bad("topics must name at least one topic".into()));
        }
        let resume: Vec<(String, u64)> = match request.resume_after.as_ref().map(|r| r.pairs()) {
            None => Vec::new(),
            Some(Ok(pairs)) => pairs,
            Some(Err(message)) => return Err(bad(message)),
        };
        let batch_size = match request.replay_batch_size {
            None => None,
            Some(n) if n < 1 => return Err(bad("replay_batch_size must be at least 1".into())),
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
            return Err(SyncError::forbidden_topic(&forbidden));
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
            return Err(too_many());
        }
        Ok(SubscribePlan {
            topics,
            resume,
            batch_size,
            request_id: request.request_id,
        })
    }

    /// Attaches the plan's topics to the channel: a new topic registers on its feed and starts
    /// at its resume cursor (or at the head, live only); an attached one moves to its resume
    /// cursor, if given. Every topic's replay target becomes the head in `states`.
    fn attach(&mut self, plan: SubscribePlan, states: &[TopicState]) -> SubscribeReply {
        let tailers: Vec<_> = states
            .iter()
            .map(|state| {
                self.gateway
                    .tailer(&state.topic)
                    .expect("known topics have tailers")
                    .clone()
            })
            .collect();
        let principal = &self.auth.principal;
        let (id, wake) = (self.id, &self.wake);
        let channel = self.channel.as_mut().expect("joined");
        for (state, tailer) in states.iter().zip(tailers) {
            let resume_at = plan.resume_at(&state.topic);
            match channel.topics.iter_mut().find(|s| s.topic == state.topic) {
                Some(existing) => {
                    if let Some(cursor) = resume_at {
                        existing.cursor = cursor;
                    }
                    existing.target = existing.target.max(state.head_watermark);
                }
                None => channel.topics.push(TopicSub {
                    topic: state.topic.clone(),
                    handle: tailer.attach(principal, id, wake.clone()),
                    cursor: resume_at.unwrap_or(state.head_watermark),
                    target: state.head_watermark,
                }),
            }
        }
        if let Some(size) = plan.batch_size {
            channel.batch_size = size;
        }
        channel.replay_pending = true;
        SubscribeReply {
            subscription_id: channel.subscription_id.clone(),
            topics: channel.topics.iter().map(|t| t.topic.clone()).collect(),
            current_watermarks: channel.heads(),
            request_id: plan.request_id,
        }
    }
}

/// Reads the plan's topic states and refuses the subscribe if replay cannot serve a resume
/// cursor it names (every stale topic is listed in the one error).
async fn fresh_topic_states(
    gateway: &Gateway,
    plan: &SubscribePlan,
) -> Result<Vec<TopicState>, SyncError> {
    let names: Vec<&str> = plan.topics.iter().map(String::as_str).collect();
    let states = gateway.source().topic_states(&names).await.map_err(|e| {
        if let SourceError::ReplicaUnavailable(_) = e {
            tracing::warn!(error.message = %e, "read replica unavailable at subscribe");
            return SyncError::new(
                ErrorCode::Internal,
                "read replica unavailable; retry with backoff",
            );
        }
        tracing::error!(error.message = %e, error.cause_chain = ?e, "sync source failed at subscribe");
        SyncError::new(
            ErrorCode::Internal,
            "sync source unavailable; retry with backoff",
        )
    })?;
    let ahead_limits = ahead_limits(gateway, plan, &states, &names).await;
    let config = gateway.config();
    let mut stale = Vec::new();
    for (state, ahead_limit) in states.iter().zip(ahead_limits) {
        let Some(cursor) = plan.resume_at(&state.topic) else {
            continue;
        };
        let budget = config
            .policy(&state.topic)
            .map_or(u64::MAX, |p| p.replay_budget);
        if let Some(reason) = staleness(state, cursor, budget, ahead_limit) {
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
        return Err(SyncError::stale_cursor(&stale));
    }
    Ok(states)
}

/// How far ahead of the source's head each topic's resume cursor may be: the source's own head,
/// unless the source reads a replica and a cursor is ahead of it. Then the primary's head: a
/// cursor the primary has reached was handed out by it or by another node, and the session waits
/// for the replica to replay it. If the primary cannot be asked, such a cursor is believed (the
/// session waits; a cursor nobody wrote waits until the client gives up).
async fn ahead_limits(
    gateway: &Gateway,
    plan: &SubscribePlan,
    states: &[TopicState],
    names: &[&str],
) -> Vec<u64> {
    let own: Vec<u64> = states.iter().map(|s| s.head_watermark).collect();
    let ahead = states.iter().any(|s| {
        plan.resume_at(&s.topic)
            .is_some_and(|c| c > s.head_watermark)
    });
    if !ahead {
        return own;
    }
    match gateway.source().primary_heads(names).await {
        Ok(None) => own,
        Ok(Some(primary)) => primary
            .into_iter()
            .zip(own)
            .map(|(p, o)| p.max(o))
            .collect(),
        Err(e) => {
            tracing::warn!(error.message = %e, "primary heads unknown at subscribe; cursors ahead of the replica wait");
            vec![u64::MAX; own.len()]
        }
    }
}

/// Why replay cannot serve a resume from `cursor` on a topic in `state` with a replay budget of
/// `budget` events, if it cannot. A cursor past the head up to `ahead_limit` waits for the head
/// to reach it (a replica behind the primary); past `ahead_limit` it is `cursor_ahead`.
fn staleness(
    state: &TopicState,
    cursor: u64,
    budget: u64,
    ahead_limit: u64,
) -> Option<StaleReason> {
    if cursor < state.retention_floor {
        Some(if cursor < state.epoch_start {
            StaleReason::EpochChanged
        } else {
            StaleReason::RetentionFloorBreach
        })
    } else if cursor > state.head_watermark.max(ahead_limit) {
        Some(StaleReason::CursorAhead)
    } else if cursor > state.head_watermark {
        None
    } else if state.head_watermark - cursor > budget {
        Some(StaleReason::ReplayBudgetExceeded)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_cursor_is_stale_below_the_floor_ahead_of_the_head_or_past_the_budget() {
        let state = TopicState {
            topic: "t".into(),
            head_watermark: 100,
            retention_floor: 40,
            epoch: 2,
            epoch_start: 30,
        };
        let reason = |cursor| staleness(&state, cursor, 50, 100);
        assert_eq!(reason(10), Some(StaleReason::EpochChanged));
        assert_eq!(reason(35), Some(StaleReason::RetentionFloorBreach));
        assert_eq!(reason(101), Some(StaleReason::CursorAhead));
        assert_eq!(reason(45), Some(StaleReason::ReplayBudgetExceeded));
        assert_eq!(reason(50), None);
        assert_eq!(reason(100), None);
    }

    #[test]
    fn a_cursor_ahead_of_a_replica_but_not_of_the_primary_waits() {
        let state = TopicState {
            topic: "t".into(),
            head_watermark: 100,
            retention_floor: 0,
            epoch: 1,
            epoch_start: 0,
        };
        // The primary is at 120: 101..=120 wait for the replica, 121 was never written.
        assert_eq!(staleness(&state, 101, 50, 120), None);
        assert_eq!(staleness(&state, 120, 50, 120), None);
        assert_eq!(
            staleness(&state, 121, 50, 120),
            Some(StaleReason::CursorAhead)
        );
    }
}

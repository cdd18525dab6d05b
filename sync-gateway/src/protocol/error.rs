//! Error codes and error payloads (`sync:error` pushes and error replies), with the extra fields
//! each code carries.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Machine-readable error codes. The client action for each is in `docs/khala-protocol.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Token missing, invalid or expired: refresh the token, reconnect.
    Unauthorized,
    /// Channel topic other than `sync:v1`: fix the client.
    BadTopic,
    /// Malformed request or frame: fix the request.
    BadSubscription,
    /// Topic unknown or not in the token's scopes: drop the topic.
    ForbiddenTopic,
    /// The cursor cannot be served by replay: hydrate fully and reset the watermark.
    StaleCursor,
    /// A frame from the client is too large: send smaller frames.
    PayloadTooLarge,
    /// Too many subscribes: retry after `retry_after_ms`.
    RateLimited,
    /// The client does not read fast enough: slow down / reconnect after `reconnect_after_ms`.
    SlowConsumer,
    /// The session or device was revoked: authenticate again for a new token.
    ReauthRequired,
    /// A server-side failure: reconnect with backoff.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::BadSubscription => "bad_subscription",
            ErrorCode::ForbiddenTopic => "forbidden_topic",
            ErrorCode::StaleCursor => "stale_cursor",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ReauthRequired => "reauth_required",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Why a cursor is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    /// The cursor is below the topic's retention floor (rows were pruned).
    RetentionFloorBreach,
    /// The cursor is from before the topic's current epoch (a rebuild).
    EpochChanged,
    /// `head - cursor` exceeds the topic's replay budget.
    ReplayBudgetExceeded,
    /// The cursor is ahead of the topic's head.
    CursorAhead,
}

/// One entry of `stale_topics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleTopic {
    pub topic: String,
    pub reason: StaleReason,
    pub resume_after: u64,
    pub retention_floor: u64,
    pub head_watermark: u64,
    pub replay_budget_events: u64,
}

/// An error payload: `{code, message, ...extra}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SyncError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds an extra field.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.insert(
            key.to_owned(),
            serde_json::to_value(value).expect("error details serialize"),
        );
        self
    }

    /// `stale_cursor` with `full_resync_required`, `reason_codes` and `stale_topics`.
    pub fn stale_cursor(stale: &[StaleTopic]) -> Self {
        let mut reasons: Vec<StaleReason> = Vec::new();
        for topic in stale {
            if !reasons.contains(&topic.reason) {
                reasons.push(topic.reason);
            }
        }
        let message = match stale.first().map(|t| t.reason) {
            Some(StaleReason::RetentionFloorBreach) => "cursor is older than retention floor",
            Some(StaleReason::EpochChanged) => "cursor is from an older stream epoch",
            Some(StaleReason::ReplayBudgetExceeded) => "cursor is beyond the replay budget",
            Some(StaleReason::CursorAhead) => "cursor is ahead of the topic head",
            None => "cursor is stale",
        };
        SyncError::new(ErrorCode::StaleCursor, message)
            .with("full_resync_required", true)
            .with("reason_codes", reasons)
            .with("stale_topics", stale)
    }

    /// `forbidden_topic` listing the offending topics.
    pub fn forbidden_topic(topics: &[String]) -> Self {
        SyncError::new(
            ErrorCode::ForbiddenTopic,
            format!(
                "topics unknown or not in the token's scopes: {}",
                topics.join(", ")
            ),
        )
        .with("forbidden_topics", topics)
    }

    /// `rate_limited` with `retry_after_ms`.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        SyncError::new(ErrorCode::RateLimited, "too many subscribe requests")
            .with("retry_after_ms", retry_after_ms)
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("error payload serializes")
    }

    /// The extra field `key` as a u64.
    pub fn extra_u64(&self, key: &str) -> Option<u64> {
        self.extra.get(key).and_then(Value::as_u64)
    }
}

/// `slow_consumer` actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerAction {
    Throttle,
    Disconnect,
}

/// The `slow_consumer` payload fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowConsumer {
    pub action: SlowConsumerAction,
    pub topic: Option<String>,
    pub queue_depth: usize,
    pub queue_limit: usize,
    pub reconnect_after_ms: u64,
    pub full_resync_required: bool,
}

impl From<SlowConsumer> for SyncError {
    fn from(s: SlowConsumer) -> Self {
        let message = match s.action {
            SlowConsumerAction::Throttle => "outbound queue full; delivery is throttled",
            SlowConsumerAction::Disconnect => "outbound queue full too long; disconnecting",
        };
        SyncError::new(ErrorCode::SlowConsumer, message)
            .with("action", s.action)
            .with("topic", s.topic)
            .with("queue_depth", s.queue_depth)
            .with("queue_limit", s.queue_limit)
            .with("reconnect_after_ms", s.reconnect_after_ms)
            .with("full_resync_required", s.full_resync_required)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_cursor_payload_has_the_documented_shape() {
        let error = SyncError::stale_cursor(&[StaleTopic {
            topic: "runtime.run_summaries".into(),
            reason: StaleReason::RetentionFloorBreach,
            resume_after: 10,
            retention_floor: 42,
            head_watermark: 50,
            replay_budget_events: 20_000,
        }]);
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"code":"stale_cursor","message":"cursor is older than retention floor","full_resync_required":true,"reason_codes":["retention_floor_breach"],"stale_topics":[{"topic":"runtime.run_summaries","reason":"retention_floor_breach","resume_after":10,"retention_floor":42,"head_watermark":50,"replay_budget_events":20000}]}"#
        );
    }

    #[test]
    fn codes_render_lowercase() {
        for (code, text) in [
            (ErrorCode::Unauthorized, "unauthorized"),
            (ErrorCode::BadTopic, "bad_topic"),
            (ErrorCode::BadSubscription, "bad_subscription"),
            (ErrorCode::ForbiddenTopic, "forbidden_topic"),
            (ErrorCode::StaleCursor, "stale_cursor"),
            (ErrorCode::PayloadTooLarge, "payload_too_large"),
            (ErrorCode::RateLimited, "rate_limited"),
            (ErrorCode::SlowConsumer, "slow_consumer"),
            (ErrorCode::ReauthRequired, "reauth_required"),
            (ErrorCode::Internal, "internal"),
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), text);
            assert_eq!(code.as_str(), text);
        }
    }

    #[test]
    fn slow_consumer_carries_queue_details() {
        let error: SyncError = SlowConsumer {
            action: SlowConsumerAction::Disconnect,
            topic: Some("runtime.run_summaries".into()),
            queue_depth: 32,
            queue_limit: 32,
            reconnect_after_ms: 1000,
            full_resync_required: false,
        }
        .into();
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"code":"slow_consumer","message":"outbound queue full too long; disconnecting","action":"disconnect","topic":"runtime.run_summaries","queue_depth":32,"queue_limit":32,"reconnect_after_ms":1000,"full_resync_required":false}"#
        );
    }
}

//! The `sync:v1` payloads: client requests, replies and server pushes, with their exact JSON
//! field names and order.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{topic, watermark}`, used in replies, heartbeats and `head_watermarks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicWatermark {
    pub topic: String,
    pub watermark: u64,
}

/// `phx_join` params on `sync:v1`. Phoenix clients may send arbitrary params, so unknown fields
/// are ignored here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct JoinParams {
    /// Opt in to `sync:frame` pushes (the `KhalaFrame` envelope) instead of
    /// `sync:update_batch` / `sync:error` pushes.
    #[serde(default)]
    pub khala_frame: bool,
}

/// `resume_after` as a map `{topic: watermark}` or a list `[{topic, watermark}]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ResumeAfter {
    Map(serde_json::Map<String, Value>),
    List(Vec<TopicWatermark>),
}

impl ResumeAfter {
    /// How many entries it holds (checked against the topic limit before any other work).
    pub fn len(&self) -> usize {
        match self {
            ResumeAfter::Map(map) => map.len(),
            ResumeAfter::List(items) => items.len(),
        }
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(topic, watermark)` pairs, in the client's order.
    ///
    /// # Errors
    /// A message naming the first entry whose watermark is not a non-negative integer.
    pub fn pairs(&self) -> Result<Vec<(String, u64)>, String> {
        match self {
            ResumeAfter::List(items) => Ok(items
                .iter()
                .map(|tw| (tw.topic.clone(), tw.watermark))
                .collect()),
            ResumeAfter::Map(map) => map
                .iter()
                .map(|(topic, wm)| match wm.as_u64() {
                    Some(wm) => Ok((topic.clone(), wm)),
                    None => Err(format!(
                        "resume_after[{topic}] must be a non-negative integer watermark"
                    )),
                })
                .collect(),
        }
    }
}

/// `sync:subscribe`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub topics: Vec<String>,
    #[serde(default)]
    pub resume_after: Option<ResumeAfter>,
    #[serde(default)]
    pub replay_batch_size: Option<i64>,
    #[serde(default)]
    pub request_id: Option<Value>,
}

/// `sync:unsubscribe`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeRequest {
    pub topics: Vec<String>,
    #[serde(default)]
    pub request_id: Option<Value>,
}

/// Reply to a successful `phx_join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub subscription_id: String,
    pub allowed_topics: Vec<String>,
    pub current_watermarks: Vec<TopicWatermark>,
}

/// Reply to `sync:subscribe` / `sync:unsubscribe`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribeReply {
    pub subscription_id: String,
    pub topics: Vec<String>,
    pub current_watermarks: Vec<TopicWatermark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Value>,
}

/// Reply to the client's `sync:heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub subscription_id: String,
    /// Per subscribed topic, the watermark through which this client has been sent every
    /// update it may see (safe to persist as its resume point).
    pub watermarks: Vec<TopicWatermark>,
}

/// The server's `sync:heartbeat` push, every 15 s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatPush {
    /// Same meaning as [`HeartbeatReply::watermarks`].
    pub watermarks: Vec<TopicWatermark>,
}

/// One document change as a client receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub topic: String,
    pub doc_key: String,
    pub doc_version: u64,
    /// The document, or `null` when it is larger than the per-update limit (then
    /// `hydration_required` is true and the client fetches it over HTTP).
    pub payload: Option<Value>,
    /// `sha256:` + hex SHA-256 of the canonical JSON of the full payload (also for pointers).
    pub payload_hash: String,
    pub watermark: u64,
    #[serde(default)]
    pub hydration_required: bool,
}

/// `sync:update_batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateBatch {
    pub updates: Vec<Update>,
    pub replay_complete: bool,
    pub head_watermarks: Vec<TopicWatermark>,
}

//! The Khala wire format: Phoenix Channels v2 JSON frames `[join_ref, ref, topic, event, payload]`,
//! the `sync:v1` payload types, error codes, and the optional `sync:frame` envelope.
//!
//! Everything here is pure data (serde), shared by the server, the watch client and the tests.

pub mod envelope;
pub mod error;
pub mod messages;

use serde_json::Value;

pub use envelope::{FrameKind, KhalaFrame};
pub use error::{ErrorCode, StaleReason, StaleTopic, SyncError};
pub use messages::*;

/// The one channel topic clients join.
pub const CHANNEL_TOPIC: &str = "sync:v1";
/// Phoenix's socket-level topic (heartbeats).
pub const PHOENIX_TOPIC: &str = "phoenix";
/// The serializer version clients announce with `vsn=`.
pub const PHOENIX_VSN: &str = "2.0.0";
/// The `protocol_version` a compatible client announces.
pub const PROTOCOL_VERSION: &str = "khala.ws.v1";

/// Event names.
pub mod event {
    pub const JOIN: &str = "phx_join";
    pub const LEAVE: &str = "phx_leave";
    pub const REPLY: &str = "phx_reply";
    pub const CLOSE: &str = "phx_close";
    pub const ERROR: &str = "phx_error";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const SUBSCRIBE: &str = "sync:subscribe";
    pub const UNSUBSCRIBE: &str = "sync:unsubscribe";
    pub const SYNC_HEARTBEAT: &str = "sync:heartbeat";
    pub const UPDATE_BATCH: &str = "sync:update_batch";
    pub const SYNC_ERROR: &str = "sync:error";
    pub const SYNC_FRAME: &str = "sync:frame";
}

/// One Phoenix v2 frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// Why a text frame is not a Phoenix v2 frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame must be a JSON array [join_ref, ref, topic, event, payload]")]
    NotArray,
    #[error("frame must have exactly 5 elements, got {0}")]
    Arity(usize),
    #[error("frame element {0} must be a string or null")]
    BadRef(&'static str),
    #[error("frame element {0} must be a string")]
    BadString(&'static str),
}

fn opt_ref(value: Value, name: &'static str) -> Result<Option<String>, FrameError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        // Some clients count refs with integers; Phoenix itself treats refs as opaque strings.
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(FrameError::BadRef(name)),
    }
}

impl Frame {
    /// Parses a text frame.
    ///
    /// # Errors
    /// [`FrameError`] when the text is not JSON or not a 5-element array of the right types.
    pub fn parse(text: &str) -> Result<Frame, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(FrameError::NotArray);
        };
        if items.len() != 5 {
            return Err(FrameError::Arity(items.len()));
        }
        let mut items = items.into_iter();
        let mut next = || items.next().unwrap_or(Value::Null);
        let join_ref = opt_ref(next(), "join_ref")?;
        let msg_ref = opt_ref(next(), "ref")?;
        let Value::String(topic) = next() else {
            return Err(FrameError::BadString("topic"));
        };
        let Value::String(event) = next() else {
            return Err(FrameError::BadString("event"));
        };
        let payload = next();
        Ok(Frame {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        })
    }

    /// The frame as its JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&(
            &self.join_ref,
            &self.msg_ref,
            &self.topic,
            &self.event,
            &self.payload,
        ))
        .expect("a frame of JSON values always serializes")
    }

    /// A `phx_reply` to `request` with `status` (`ok` / `error`) and `response`.
    pub fn reply(request: &Frame, status: &str, response: Value) -> Frame {
        Frame {
            join_ref: request.join_ref.clone(),
            msg_ref: request.msg_ref.clone(),
            topic: request.topic.clone(),
            event: event::REPLY.to_owned(),
            payload: serde_json::json!({ "status": status, "response": response }),
        }
    }

    /// A server push on the channel joined with `join_ref`.
    pub fn push(join_ref: Option<&str>, topic: &str, event: &str, payload: Value) -> Frame {
        Frame {
            join_ref: join_ref.map(str::to_owned),
            msg_ref: None,
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        }
    }

    /// For a reply frame: `(status, response)`.
    pub fn reply_parts(&self) -> Option<(&str, &Value)> {
        if self.event != event::REPLY {
            return None;
        }
        let status = self.payload.get("status")?.as_str()?;
        let response = self.payload.get("response")?;
        Some((status, response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_serializes_phoenix_v2_arrays_exactly() {
        let text = r#"["1","2","sync:v1","phx_join",{}]"#;
        let frame = Frame::parse(text).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("1"));
        assert_eq!(frame.msg_ref.as_deref(), Some("2"));
        assert_eq!(frame.topic, "sync:v1");
        assert_eq!(frame.event, "phx_join");
        assert_eq!(frame.to_json(), text);

        let heartbeat = Frame::parse(r#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(
            Frame::reply(&heartbeat, "ok", json!({})).to_json(),
            r#"[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn numeric_refs_are_read_as_strings() {
        let frame = Frame::parse(r#"[1,2,"sync:v1","phx_join",{}]"#).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("1"));
        assert_eq!(frame.msg_ref.as_deref(), Some("2"));
    }

    #[test]
    fn rejects_garbage_with_a_precise_reason() {
        assert!(matches!(Frame::parse("nope"), Err(FrameError::Json(_))));
        assert_eq!(Frame::parse("{}"), Err(FrameError::NotArray));
        assert_eq!(Frame::parse("[1,2,3]"), Err(FrameError::Arity(3)));
        assert_eq!(
            Frame::parse(r#"[null,null,5,"x",{}]"#),
            Err(FrameError::BadString("topic"))
        );
        assert_eq!(
            Frame::parse(r#"[{},null,"t","x",{}]"#),
            Err(FrameError::BadRef("join_ref"))
        );
    }
}

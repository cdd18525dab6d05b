//! The optional `sync:frame` envelope (`openagents.sync.v1.KhalaFrame`): one topic's update batch
//! or error, as base64 bytes of the same JSON a `sync:update_batch` / `sync:error` push carries.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The envelope's schema version.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameKind {
    #[serde(rename = "KHALA_FRAME_KIND_UPDATE_BATCH")]
    UpdateBatch,
    #[serde(rename = "KHALA_FRAME_KIND_ERROR")]
    Error,
}

/// `{topic, seq, kind, payload_bytes, schema_version}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KhalaFrame {
    /// The sync topic (`runtime.run_summaries`, …) the batch belongs to.
    pub topic: String,
    /// The highest watermark in the batch (0 for errors).
    pub seq: u64,
    pub kind: FrameKind,
    /// Standard base64 of the UTF-8 JSON payload.
    pub payload_bytes: String,
    pub schema_version: u32,
}

impl KhalaFrame {
    pub fn new(topic: &str, seq: u64, kind: FrameKind, payload_json: &[u8]) -> Self {
        Self {
            topic: topic.to_owned(),
            seq,
            kind,
            payload_bytes: base64::engine::general_purpose::STANDARD.encode(payload_json),
            schema_version: SCHEMA_VERSION,
        }
    }

    /// The decoded payload bytes.
    ///
    /// # Errors
    /// When `payload_bytes` is not valid base64.
    pub fn payload(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.payload_bytes)
    }
}

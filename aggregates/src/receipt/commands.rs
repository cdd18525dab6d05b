//! Commands the RunReceipt aggregate accepts.

use serde_json::{Map, Value};

use crate::ids::RunId;

#[derive(Clone, Debug, PartialEq)]
pub enum ReceiptCommand {
    /// Record the receipt of a finished run. Recording the same receipt again (same
    /// `canonical_json_sha256`) is a no-op; a different one is rejected.
    RecordReceipt {
        run_id: RunId,
        /// The full `openagents.receipt.v1` object (with `canonical_json_sha256`, optionally
        /// `signature`).
        receipt: Map<String, Value>,
        /// The run's REPLAY.jsonl v1 hash at the same point.
        replay_hash: String,
        /// The run's terminal status (`succeeded`, `failed`, `canceled`).
        run_status: String,
    },
}

//! Events of a run receipt. `event_type()` strings and field names are a storage format.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::RunId;
use crate::Timestamp;

/// Current version of every receipt event shape.
pub const RECEIPT_EVENT_VERSION: &str = "1.0";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReceiptEvent {
    /// The run's receipt, recorded once the run reached a terminal state.
    ReceiptRecorded {
        run_id: RunId,
        /// The full `openagents.receipt.v1` object as served.
        receipt: Map<String, Value>,
        /// Copied from the receipt for cheap reads by projections.
        canonical_json_sha256: String,
        trajectory_hash: String,
        replay_hash: String,
        run_status: String,
        /// The run seq the receipt covers up to.
        last_seq: u64,
        recorded_at: Timestamp,
    },
}

impl DomainEvent for ReceiptEvent {
    fn event_type(&self) -> String {
        match self {
            ReceiptEvent::ReceiptRecorded { .. } => "run_receipt.recorded".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        RECEIPT_EVENT_VERSION.to_owned()
    }
}

/// The receipt fields a summary needs, read from a receipt object.
pub(crate) fn receipt_str<'a>(receipt: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    receipt.get(key).and_then(Value::as_str)
}

//! The RunReceipt aggregate: the `openagents.receipt.v1` of one finished run, recorded in the
//! journal (aggregate type `run_receipt`, id = the run id). It lives beside the Run aggregate, not
//! in its stream, so recording it never changes the run's seq numbers, trajectory or replay hash.
//! Recording is idempotent: the first receipt takes sequence 1 (optimistic concurrency settles a
//! race between two recorders), the same receipt again is a no-op, a different one is rejected.

mod commands;
mod error;
mod events;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use commands::ReceiptCommand;
pub use error::ReceiptError;
pub use events::{ReceiptEvent, RECEIPT_EVENT_VERSION};

use crate::canonical::{prefixed_hex, write_canonical_members};
use crate::ids::RunId;
use crate::{RuntimeAggregate, Stamped, Timestamp};

/// `schema` of a receipt.
pub const RECEIPT_SCHEMA: &str = "openagents.receipt.v1";

/// Bare hex SHA-256 over the canonical JSON of `receipt` without `canonical_json_sha256` and
/// `signature`: the receipt's `canonical_json_sha256`.
pub fn receipt_canonical_sha256(receipt: &Map<String, Value>) -> String {
    let unsigned = receipt
        .iter()
        .filter(|(k, _)| k.as_str() != "canonical_json_sha256" && k.as_str() != "signature");
    // Streamed into the hash: neither the unsigned copy nor its text is built.
    let mut hasher = Sha256::new();
    write_canonical_members(unsigned, &mut hasher).expect("hashing cannot fail");
    prefixed_hex("", &hasher.finalize())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Recorded {
    run_id: RunId,
    canonical_json_sha256: String,
    trajectory_hash: String,
    replay_hash: String,
    run_status: String,
    last_seq: u64,
    recorded_at: Timestamp,
    receipt: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReceipt {
    recorded: Option<Recorded>,
}

/// A cheap view of a recorded receipt.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReceiptSummary {
    pub run_id: Option<RunId>,
    pub canonical_json_sha256: Option<String>,
    pub trajectory_hash: Option<String>,
    pub replay_hash: Option<String>,
    pub run_status: Option<String>,
    pub last_seq: u64,
    pub recorded_at: Option<Timestamp>,
    pub receipt: Option<Map<String, Value>>,
}

impl RunReceiptSummary {
    pub fn exists(&self) -> bool {
        self.canonical_json_sha256.is_some()
    }
}

fn validate(
    run_id: &RunId,
    receipt: &Map<String, Value>,
) -> Result<(String, String, u64), ReceiptError> {
    let invalid = |msg: &str| Err(ReceiptError::Invalid(msg.to_owned()));
    if events::receipt_str(receipt, "schema") != Some(RECEIPT_SCHEMA) {
        return invalid("schema must be openagents.receipt.v1");
    }
    if events::receipt_str(receipt, "session_id") != Some(run_id.as_str()) {
        return invalid("session_id must be the run id");
    }
    let Some(trajectory_hash) = events::receipt_str(receipt, "trajectory_hash") else {
        return invalid("trajectory_hash is missing");
    };
    let Some(stated) = events::receipt_str(receipt, "canonical_json_sha256") else {
        return invalid("canonical_json_sha256 is missing");
    };
    let computed = receipt_canonical_sha256(receipt);
    if stated != computed {
        return Err(ReceiptError::Invalid(format!(
            "canonical_json_sha256 is {stated} but the receipt hashes to {computed}"
        )));
    }
    let last_seq = receipt.get("last_seq").and_then(Value::as_u64).unwrap_or(0);
    Ok((computed, trajectory_hash.to_owned(), last_seq))
}

impl Aggregate for RunReceipt {
    const TYPE: &'static str = "run_receipt";
    type Command = Stamped<ReceiptCommand>;
    type Event = ReceiptEvent;
    type Error = ReceiptError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let at = command.at;
        let ReceiptCommand::RecordReceipt {
            run_id,
            receipt,
            replay_hash,
            run_status,
        } = command.command;
        let (canonical_json_sha256, trajectory_hash, last_seq) = validate(&run_id, &receipt)?;
        if let Some(recorded) = &self.recorded {
            return if recorded.canonical_json_sha256 == canonical_json_sha256 {
                Ok(())
            } else {
                Err(ReceiptError::Conflict {
                    recorded: recorded.canonical_json_sha256.clone(),
                    offered: canonical_json_sha256,
                })
            };
        }
        let event = ReceiptEvent::ReceiptRecorded {
            run_id,
            receipt,
            canonical_json_sha256,
            trajectory_hash,
            replay_hash,
            run_status,
            last_seq,
            recorded_at: at,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ReceiptEvent::ReceiptRecorded {
                run_id,
                receipt,
                canonical_json_sha256,
                trajectory_hash,
                replay_hash,
                run_status,
                last_seq,
                recorded_at,
            } => {
                self.recorded = Some(Recorded {
                    run_id,
                    canonical_json_sha256,
                    trajectory_hash,
                    replay_hash,
                    run_status,
                    last_seq,
                    recorded_at,
                    receipt,
                });
            }
        }
    }
}

impl RuntimeAggregate for RunReceipt {
    type Action = ReceiptCommand;
    type Summary = RunReceiptSummary;

    fn summary(&self) -> RunReceiptSummary {
        let r = self.recorded.as_ref();
        RunReceiptSummary {
            run_id: r.map(|r| r.run_id.clone()),
            canonical_json_sha256: r.map(|r| r.canonical_json_sha256.clone()),
            trajectory_hash: r.map(|r| r.trajectory_hash.clone()),
            replay_hash: r.map(|r| r.replay_hash.clone()),
            run_status: r.map(|r| r.run_status.clone()),
            last_seq: r.map_or(0, |r| r.last_seq),
            recorded_at: r.map(|r| r.recorded_at),
            receipt: r.map(|r| r.receipt.clone()),
        }
    }
}

#[cfg(test)]
mod tests;

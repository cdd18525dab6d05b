//! Recording a finished run's receipt in the journal, as the `run_receipt` aggregate's one event.
//! Called when a run reaches a terminal state (by the projector runner reacting to `run.finished`;
//! see `docs/receipts-and-replay.md`); safe to call any number of times and from several processes:
//! the first call appends at sequence 1, later calls find the same receipt and change nothing.

use aggregates::ids::RunId;
use aggregates::receipt::{ReceiptCommand, ReceiptError, RunReceipt};
use aggregates::run::{Run, RunError};

use super::receipt::{build_receipt, Receipt, SettledPayment};
use super::record::RunRecord;
use super::replay::replay_hash;
use super::signature::ReceiptSigner;
use super::ArtifactError;
use crate::command::{CommandContext, CommandError, Engine, OutcomeKind};

/// The actor recorded in the receipt event's metadata.
pub const RECORDER_ACTOR: &str = "receipt-recorder";

/// What [`record_receipt`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordOutcome {
    /// The receipt was appended now.
    Recorded(Receipt),
    /// This receipt was already recorded (by an earlier call or another process).
    AlreadyRecorded(Receipt),
    /// The run has not reached a terminal state; nothing was written.
    NotTerminal,
}

/// Why a receipt could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("run not found")]
    NotFound,
    /// A different receipt is recorded for the run: the run's events changed after it was
    /// recorded, or receipt generation is not deterministic. Worth an alert.
    #[error("a different receipt is already recorded for this run ({recorded}, now {offered})")]
    Conflict { recorded: String, offered: String },
    #[error("the run's events do not form a valid stream: {0}")]
    Corrupt(String),
    #[error("journal unavailable")]
    Unavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

fn from_run_error(error: CommandError<RunError>) -> RecordError {
    match error {
        CommandError::Unavailable(_) => RecordError::Unavailable,
        other => RecordError::Internal(other.to_string()),
    }
}

/// Loads a run's stream from the journal; `None` if the run does not exist.
///
/// # Errors
/// [`RecordError::Unavailable`], [`RecordError::Corrupt`] or [`RecordError::Internal`].
pub async fn load_run_record(
    engine: &Engine,
    run_id: &str,
) -> Result<Option<RunRecord>, RecordError> {
    let events = engine
        .events_after::<Run>(run_id, 0)
        .await
        .map_err(from_run_error)?;
    if events.is_empty() {
        return Ok(None);
    }
    let record = RunRecord::fold(
        events
            .iter()
            .map(|e| (e.sequence as u64, &e.payload, &e.metadata)),
    );
    match record {
        Ok(record) => Ok(Some(record)),
        Err(ArtifactError::NotFound) => Ok(None),
        Err(ArtifactError::Corrupt(message)) => Err(RecordError::Corrupt(message)),
    }
}

/// Builds the run's receipt (signed when a signer is given).
pub fn receipt_for(
    record: &RunRecord,
    signer: Option<&ReceiptSigner>,
    settled: &[SettledPayment],
) -> Receipt {
    let mut receipt = build_receipt(record, settled);
    if let Some(signer) = signer {
        receipt.signature = Some(
            signer
                .sign_sha256_hex(&receipt.canonical_json_sha256)
                .expect("canonical_json_sha256 is always 64 hex characters"),
        );
    }
    receipt
}

/// Records the receipt of run `run_id` if it is terminal.
///
/// # Errors
/// See [`RecordError`].
pub async fn record_receipt(
    engine: &Engine,
    run_id: &str,
    signer: Option<&ReceiptSigner>,
    settled: &[SettledPayment],
) -> Result<RecordOutcome, RecordError> {
    let Some(record) = load_run_record(engine, run_id).await? else {
        return Err(RecordError::NotFound);
    };
    if !record.status.is_terminal() {
        return Ok(RecordOutcome::NotTerminal);
    }
    let receipt = receipt_for(&record, signer, settled);
    let run_id = RunId::parse(run_id).map_err(|e| RecordError::Internal(e.to_string()))?;
    let command = ReceiptCommand::RecordReceipt {
        run_id: run_id.clone(),
        receipt: receipt.to_map(),
        replay_hash: replay_hash(&record),
        run_status: record.status.as_str().to_owned(),
    };
    let outcome = engine
        .execute::<RunReceipt>(
            run_id.as_str(),
            command,
            &CommandContext::system(RECORDER_ACTOR),
        )
        .await;
    match outcome {
        Ok(o) if o.kind == OutcomeKind::Appended => Ok(RecordOutcome::Recorded(receipt)),
        Ok(_) => Ok(RecordOutcome::AlreadyRecorded(receipt)),
        Err(CommandError::Rejected(ReceiptError::Conflict { recorded, offered })) => {
            Err(RecordError::Conflict { recorded, offered })
        }
        Err(CommandError::Unavailable(_)) => Err(RecordError::Unavailable),
        Err(other) => Err(RecordError::Internal(other.to_string())),
    }
}

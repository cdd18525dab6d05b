//! Run artifacts: what the runtime proves about a run. All pure functions of the run's journal
//! events, so anyone holding the events recomputes them byte for byte (formats and hash specs in
//! `docs/receipts-and-replay.md`).
//!
//! # Layout
//! - [`record`]: a run's runtime stream (seq, event_type, payload, idempotency key, recorded_at)
//!   decoded from its journal events, incrementally or at once.
//! - [`trajectory`]: the `trajectory_hash`, computed while streaming.
//! - [`replay`]: REPLAY.jsonl v1, written while streaming, and a parser for it.
//! - [`receipt`]: `openagents.receipt.v1` (tool calls, verification, payments, metrics).
//! - [`signature`]: deterministic BIP-340 Schnorr receipt signatures (`secp256k1_schnorr_no_aux_rand`).
//! - [`builder`]: receipt and replay built together in one pass.
//! - [`rendered`]: the pieces of an event several artifacts write, rendered once.
//! - [`history`]: re-executing recorded run streams (compat histories, REPLAY.jsonl) through the
//!   engine.
//! - [`recorder`]: recording a finished run's receipt in the journal (`run_receipt` aggregate).

pub mod builder;
pub mod history;
pub mod receipt;
pub mod record;
pub mod recorder;
pub mod rendered;
pub mod replay;
pub mod signature;
pub mod trajectory;

pub use builder::RunArtifactsBuilder;
pub use receipt::{build_receipt, PaymentReceipt, Receipt, ReceiptBuilder, SettledPayment};
pub use record::{RunHeader, RunRecord, RunRecordBuilder, RunStreamEvent};
pub use recorder::{
    load_run_record, receipt_for, record_receipt, run_receipt_recorder, runs_missing_receipts,
    RecordError, RecordOutcome, RecorderConfig,
};
pub use replay::{parse_replay, render_replay, replay_hash, ReplayWriter};
pub use signature::{verify_receipt_signature, ReceiptSignature, ReceiptSigner, SignatureError};
pub use trajectory::{trajectory_hash, TrajectoryHasher};

/// Why artifacts could not be built from a run's events.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    /// No `run.created` event: the run does not exist.
    #[error("run not found")]
    NotFound,
    /// The events do not form a run stream (out of order, missing the birth record, undecodable).
    #[error("corrupt run stream: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests;

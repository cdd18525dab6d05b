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

/// Runs with terminal status (a `run.finished` event) and no recorded receipt. The same SQL on
/// both backends; the `NOT EXISTS` probe uses the journal's primary key.
const MISSING_RECEIPTS: &str = "SELECT DISTINCT e.aggregate_id FROM events e
  WHERE e.aggregate_type = 'run' AND e.event_type = 'run.finished'
    AND NOT EXISTS (SELECT 1 FROM events r WHERE r.aggregate_type = 'run_receipt'
                                            AND r.aggregate_id = e.aggregate_id)
  ORDER BY 1";

/// The runs that finished but have no receipt yet.
///
/// # Errors
/// When the database fails.
pub async fn runs_missing_receipts(database: &crate::Database) -> Result<Vec<String>, sqlx::Error> {
    match database {
        crate::Database::Postgres(pool) => {
            sqlx::query_scalar(MISSING_RECEIPTS).fetch_all(pool).await
        }
        crate::Database::Sqlite { pool, .. } => {
            sqlx::query_scalar(MISSING_RECEIPTS).fetch_all(pool).await
        }
    }
}

/// A cursor from which the global read returns at least every event committed after this call
/// (it may return some earlier ones again, which the recorder tolerates).
async fn live_start(database: &crate::Database) -> Result<crate::GlobalCursor, sqlx::Error> {
    use sqlx::Row;
    match database {
        crate::Database::Postgres(pool) => {
            let xmin: i64 = sqlx::query(concat!("SELECT ", crate::pg_read_horizon!()))
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            Ok(crate::GlobalCursor::new(
                xmin.saturating_sub(1).max(0) as u64,
                i64::MAX as u64,
            ))
        }
        crate::Database::Sqlite { pool, .. } => {
            let max: i64 = sqlx::query("SELECT coalesce(max(position), 0) FROM events")
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            Ok(crate::GlobalCursor::new(0, max.max(0) as u64))
        }
    }
}

/// Tunables of [`run_receipt_recorder`].
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// Signs recorded receipts.
    pub signer: Option<ReceiptSigner>,
    /// How often the journal is re-read without a wake-up (appends by other processes whose
    /// notices were lost).
    pub poll_interval: std::time::Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            signer: None,
            poll_interval: std::time::Duration::from_secs(1),
        }
    }
}

/// Records the receipt of every run that finishes, until `shutdown` is cancelled.
///
/// On start it records the receipts missing for runs that finished earlier (a crash between a
/// run's end and its receipt loses nothing), then follows the journal from its end and records
/// each run's receipt when its `run.finished` commits. Recording is idempotent, so several
/// processes may run this at once. A journal outage is retried with backoff; a receipt conflict
/// (ADR 0030) is logged as an error and skipped.
///
/// # Errors
/// Never returns an error for journal trouble (it retries); only when the start-up queries keep
/// failing is it reported, after `shutdown`.
///
/// # Cancel safety
/// Stops at the next await point after `shutdown` is cancelled; a receipt being appended then is
/// either recorded or recorded again at the next start.
pub async fn run_receipt_recorder(
    engine: std::sync::Arc<Engine>,
    database: crate::Database,
    config: RecorderConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use crate::journal::Journal;
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    );
    let mut appended = engine.notifier().appended();
    // Where the live follow starts, then the catch-up of everything before it.
    let mut cursor = loop {
        let started = async {
            let cursor = live_start(&database).await?;
            for run_id in runs_missing_receipts(&database).await? {
                record_logged(&engine, &run_id, &config).await;
            }
            Ok::<_, sqlx::Error>(cursor)
        };
        match started.await {
            Ok(cursor) => break cursor,
            Err(e) => {
                tracing::warn!(error.message = %e, "receipt recorder cannot start yet; retrying");
                if !backoff.sleep(&shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    backoff.reset();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let page = match engine.journal().read_all(cursor, 500).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error.message = %e, "receipt recorder cannot read the journal; retrying");
                if !backoff.sleep(&shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff.reset();
        let full = page.len() == 500;
        for stored in &page {
            if stored.event.aggregate_type == "run" && stored.event.event_type == "run.finished" {
                record_logged(&engine, &stored.event.aggregate_id, &config).await;
            }
            cursor = stored.cursor;
        }
        if !full {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = appended.changed() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
            }
        }
    }
}

async fn record_logged(engine: &Engine, run_id: &str, config: &RecorderConfig) {
    // Retry a journal outage for this run a few times; the start-up catch-up covers the rest.
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
    );
    for _ in 0..5u32 {
        match record_receipt(engine, run_id, config.signer.as_ref(), &[]).await {
            Ok(RecordOutcome::Recorded(receipt)) => {
                tracing::info!(run_id, receipt = %receipt.canonical_json_sha256, "receipt recorded");
                metrics::counter!("runtime_receipts_recorded_total").increment(1);
                return;
            }
            Ok(_) => return,
            Err(RecordError::Unavailable) => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::error!(error.message = %e, run_id, "receipt not recorded");
                metrics::counter!("runtime_receipt_errors_total").increment(1);
                return;
            }
        }
    }
}

//! A run's settled payments, for run receipts (`payments[]`) and audit: read from the wallet's
//! SpendLedger stream, where every settlement is committed with its run, amounts and receipt id.

use aggregates::ids::RunId;
use aggregates::payment::{SpendLedger, SpendLedgerEvent, WalletId};
use engine::Engine;
use serde::Serialize;

/// One settled payment of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunPayment {
    pub payment_id: String,
    pub amount_msats: u64,
    pub fee_msats: u64,
    pub receipt_id: String,
    pub paid_at_ms: i64,
}

/// The settled payments of `run_id` among ledger events, in settlement order. Pure.
pub fn from_ledger_events<'a>(
    events: impl IntoIterator<Item = &'a SpendLedgerEvent>,
    run_id: &RunId,
) -> Vec<RunPayment> {
    events
        .into_iter()
        .filter_map(|event| match event {
            SpendLedgerEvent::SpendCommitted {
                payment_hash,
                settled_msats,
                fee_msats,
                receipt_id,
                paid_at_ms,
                run_id: Some(run),
                ..
            } if run == run_id => Some(RunPayment {
                payment_id: payment_hash.to_string(),
                amount_msats: *settled_msats,
                fee_msats: *fee_msats,
                receipt_id: receipt_id.clone(),
                paid_at_ms: *paid_at_ms,
            }),
            _ => None,
        })
        .collect()
}

/// The settled payments of `run_id` made from `wallet_id`.
///
/// # Errors
/// When the journal cannot be read.
pub async fn run_payments(
    engine: &Engine,
    wallet_id: &WalletId,
    run_id: &RunId,
) -> anyhow::Result<Vec<RunPayment>> {
    let events = engine
        .events_after::<SpendLedger>(wallet_id.as_str(), 0)
        .await
        .map_err(|e| anyhow::anyhow!("read spend ledger {wallet_id}: {e}"))?;
    Ok(from_ledger_events(
        events.iter().map(|e| &e.payload),
        run_id,
    ))
}

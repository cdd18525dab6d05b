//! Settlement: an attempt's outcome written to the journal — `CommitSpend` then `RecordSuccess`
//! (with its receipt) for a payment LND settled, `RecordFailure` then `ReleaseSpend` for one that
//! failed — and the ledger made to agree with a payment that closed while it lagged.

use aggregates::payment::receipt::{build_receipt, ReceiptInput};
use aggregates::payment::services::PaymentProgress;
use aggregates::payment::{
    AttemptStatus, Payment, PaymentCommand, PaymentHash, SpendLedger, SpendLedgerCommand,
    SpendLedgerEvent,
};
use engine::clock::now_ms;

use super::PaymentExecutor;

impl PaymentExecutor {
    /// Records a settlement: ledger commit (which yields the window spend after it), then the
    /// payment's success with its receipt.
    pub(super) async fn settle(
        &self,
        payment_hash: &str,
        hash: &PaymentHash,
        attempt_number: u32,
        progress: PaymentProgress,
    ) -> anyhow::Result<()> {
        let PaymentProgress::Succeeded {
            preimage_hex,
            value_msats,
            fee_msats,
            settled_at_ms,
        } = progress
        else {
            anyhow::bail!("settle called without a success");
        };
        let payment = self.load_payment(payment_hash).await?;
        let facts = payment
            .invoice
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no facts"))?;
        let attempt = payment
            .attempt(attempt_number)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("attempt missing"))?;
        let settled = if value_msats > 0 {
            value_msats
        } else {
            facts.decoded.amount_msats.get()
        };
        let paid_at_ms = settled_at_ms.unwrap_or_else(now_ms);
        let receipt = build_receipt(&ReceiptInput {
            request_id: &attempt.request_id,
            wallet_id: facts.wallet_id.as_str(),
            host: &attempt.host,
            payment_id: hash.as_str(),
            invoice_hash: &facts.invoice_hash,
            quoted_amount_msats: facts.decoded.amount_msats.get(),
            settled_amount_msats: settled,
            preimage_hex: &preimage_hex,
            paid_at_ms,
        });
        let events = self
            .ledger_command(SpendLedgerCommand::CommitSpend {
                payment_hash: hash.clone(),
                attempt: attempt_number,
                settled_msats: settled,
                fee_msats,
                receipt_id: receipt.receipt_id.clone(),
                paid_at_ms,
                run_id: attempt.run_id.clone(),
                owner: attempt.owner.clone(),
                window_ms: self.config.policy.caps.window_ms,
            })
            .await
            .map_err(|e| anyhow::anyhow!("commit spend: {e}"))?;
        let window_after = match events.iter().find_map(|e| match e {
            SpendLedgerEvent::SpendCommitted {
                window_spend_after_msats,
                ..
            } => Some(*window_spend_after_msats),
            _ => None,
        }) {
            Some(after) => after,
            None => {
                let (ledger, _) = self
                    .engine
                    .load::<SpendLedger>(self.config.wallet_id.as_str())
                    .await
                    .map_err(|e| anyhow::anyhow!("load ledger: {e}"))?;
                ledger.window_spend(self.engine.now(), self.config.policy.caps.window_ms, None)
            }
        };
        self.payment_command(
            payment_hash,
            PaymentCommand::RecordSuccess {
                attempt: attempt_number,
                preimage_hex,
                settled_amount_msats: settled,
                fee_msats,
                paid_at_ms,
                window_spend_after_msats: window_after,
            },
        )
        .await?;
        self.note_paid(hash, paid_at_ms);
        Ok(())
    }

    pub(super) async fn fail(
        &self,
        payment_hash: &str,
        hash: &PaymentHash,
        attempt: u32,
        reason: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        self.payment_command(
            payment_hash,
            PaymentCommand::RecordFailure {
                attempt,
                reason: reason.to_owned(),
                message: message.to_owned(),
            },
        )
        .await?;
        self.ledger_command(SpendLedgerCommand::ReleaseSpend {
            payment_hash: hash.clone(),
            attempt,
            reason: reason.to_owned(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("release spend: {e}"))?;
        Ok(())
    }

    /// Makes the ledger agree with a closed payment: commit a settlement it missed, release
    /// reservations of attempts that ended without paying.
    pub(super) async fn settle_ledger(&self, payment: &Payment) -> anyhow::Result<()> {
        let Some(hash) = payment.payment_hash().cloned() else {
            return Ok(());
        };
        for attempt in &payment.attempts {
            match attempt.status {
                AttemptStatus::Succeeded => {
                    if let Some(s) = &payment.settlement {
                        self.ledger_command(SpendLedgerCommand::CommitSpend {
                            payment_hash: hash.clone(),
                            attempt: attempt.number,
                            settled_msats: s.settled_amount_msats,
                            fee_msats: s.fee_msats,
                            receipt_id: s.receipt.receipt_id.clone(),
                            paid_at_ms: s.paid_at_ms,
                            run_id: attempt.run_id.clone(),
                            owner: attempt.owner.clone(),
                            window_ms: self.config.policy.caps.window_ms,
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("commit spend: {e}"))?;
                    }
                }
                AttemptStatus::Failed | AttemptStatus::Denied => {
                    self.ledger_command(SpendLedgerCommand::ReleaseSpend {
                        payment_hash: hash.clone(),
                        attempt: attempt.number,
                        reason: attempt.status.as_str().to_owned(),
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("release spend: {e}"))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

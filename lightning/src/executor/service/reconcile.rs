//! The start-up reconcile: every reservation the spend ledger still holds is driven to an outcome
//! (or to being tracked) before the executor reports ready, so nothing pays an invoice whose last
//! attempt's outcome is unknown.

use std::sync::Arc;
use std::time::Duration;

use aggregates::payment::SpendLedger;
use engine::backoff::Backoff;

use super::driver::DriverState;
use super::PaymentExecutor;

impl PaymentExecutor {
    /// Reconciles every payment the ledger still holds a reservation for, then reports ready:
    /// each one must have a final answer or be tracked (LND reported it in flight) with its
    /// reservation held. Until then `/healthz`, `/status` say not ready and new payments get `503
    /// executor_not_ready`. Runs until done or shutdown; call once after construction.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads and spawns drivers.
    pub async fn run_startup_reconcile(self: &Arc<Self>) {
        let mut delay = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut pending: Option<std::collections::BTreeSet<String>> = None;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let open = match &pending {
                Some(open) => Ok(open.clone()),
                None => self
                    .engine
                    .load::<SpendLedger>(self.config.wallet_id.as_str())
                    .await
                    .map(|(ledger, _)| {
                        ledger
                            .reservations
                            .values()
                            .map(|r| r.payment_hash.to_string())
                            .collect::<std::collections::BTreeSet<String>>()
                    })
                    .map_err(|e| e.to_string()),
            };
            let open = match open {
                Ok(open) => open,
                Err(error) => {
                    tracing::warn!(error.message = %error, "cannot read the spend ledger; retrying");
                    self.pause(&mut delay).await;
                    continue;
                }
            };
            let mut unsettled = std::collections::BTreeSet::new();
            for hash in &open {
                tracing::info!(payment_hash = %hash, "reconciling a payment left open by a previous run");
                let mut state = self.ensure_driver(hash);
                let reached = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    reached = state.wait_for(|s| *s != DriverState::Running) => {
                        reached.map(|s| *s).unwrap_or(DriverState::Done)
                    }
                };
                if reached == DriverState::Done {
                    // Ended: an outcome, or a driver that stopped without one (journal trouble).
                    match self.load_payment(hash).await {
                        Ok(payment) if payment.open_attempt().is_none() => {}
                        _ => {
                            unsettled.insert(hash.clone());
                        }
                    }
                }
            }
            if unsettled.is_empty() {
                self.reconciled.send_replace(true);
                self.update_ready();
                return;
            }
            pending = Some(unsettled);
            self.pause(&mut delay).await;
        }
    }

    /// Sleeps the backoff's next delay (or until shutdown).
    async fn pause(&self, delay: &mut Backoff) {
        delay.sleep(&self.shutdown).await;
    }
}

//! The per-hash driver: one task per payment hash reserves the spend, sends with SendPaymentV2 and
//! follows an attempt whose outcome is unknown with TrackPaymentV2 until LND gives one. It runs
//! detached from the HTTP request, so a client that disconnects cannot cancel a payment half way.

use std::sync::Arc;
use std::time::Duration;

use aggregates::payment::services::{NodeError, PaymentProgress, SendRequest};
use aggregates::payment::{
    AttemptStatus, Msat, Payment, PaymentCommand, SpendLedgerCommand, SpendLedgerError,
    SpendLedgerEvent,
};
use engine::backoff::Backoff;
use engine::CommandError;
use tokio::sync::watch;

use super::PaymentExecutor;

/// The longest pause between TrackPaymentV2 tries while the node is unreachable.
const TRACK_RETRY_MAX: Duration = Duration::from_secs(2);

/// Where a payment's driver task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DriverState {
    /// Sending, or trying to reach LND.
    Running,
    /// LND reported the payment in flight (SendPaymentV2 or TrackPaymentV2 stream): it is followed
    /// and its reservation is held.
    Tracked,
    /// The driver ended (the payment has an outcome, or the driver stopped on shutdown / error).
    Done,
}

impl PaymentExecutor {
    /// Returns the running driver's completion watch for `payment_hash`, starting one if none runs.
    pub(super) fn ensure_driver(
        self: &Arc<Self>,
        payment_hash: &str,
    ) -> watch::Receiver<DriverState> {
        if !self.holds_lease() {
            return watch::channel(DriverState::Done).1;
        }
        let mut drivers = self.drivers.lock().expect("drivers lock");
        if let Some(existing) = drivers.get(payment_hash) {
            return existing.clone();
        }
        let (state_tx, state_rx) = watch::channel(DriverState::Running);
        drivers.insert(payment_hash.to_owned(), state_rx.clone());
        drop(drivers);
        let this = self.clone();
        let hash = payment_hash.to_owned();
        self.tasks.spawn(async move {
            let result = this.drive(&hash, &state_tx).await;
            if let Err(error) = result {
                tracing::error!(payment_hash = %hash, error.message = %error, error.cause_chain = ?error, "payment driver failed");
                this.note_error("driver_error", &error.to_string());
            }
            this.drivers.lock().expect("drivers lock").remove(&hash);
            state_tx.send_replace(DriverState::Done);
        });
        state_rx
    }

    /// Reserves and sends a requested attempt and follows it while the send stream lasts.
    /// Returns `true` when the attempt still needs tracking (outcome unknown).
    async fn send_attempt(
        &self,
        payment: &Payment,
        attempt_number: u32,
        state: &watch::Sender<DriverState>,
    ) -> anyhow::Result<bool> {
        let facts = payment
            .invoice
            .clone()
            .ok_or_else(|| anyhow::anyhow!("payment vanished"))?;
        let payment_hash = facts.decoded.payment_hash.to_string();
        let payment_hash = payment_hash.as_str();
        let attempt = payment
            .attempt(attempt_number)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("attempt {attempt_number} missing"))?;
        let hash = facts.decoded.payment_hash.clone();
        // The fee limit is reserved with the amount: whatever LND spends on routing is spend.
        let reserve = Msat(
            facts
                .decoded
                .amount_msats
                .get()
                .saturating_add(attempt.fee_limit_msats.get()),
        );
        let reserved = self
            .ledger_command(SpendLedgerCommand::ReserveSpend {
                payment_hash: hash.clone(),
                attempt: attempt_number,
                amount_msats: reserve,
                host: attempt.host.clone(),
                run_id: attempt.run_id.clone(),
                owner: attempt.owner.clone(),
                caps: self.config.policy.caps.clone(),
            })
            .await;
        let window_before = match reserved {
            Ok(events) => events
                .iter()
                .find_map(|e| match e {
                    SpendLedgerEvent::SpendReserved {
                        window_spend_before_msats,
                        ..
                    } => Some(*window_spend_before_msats),
                    _ => None,
                })
                .unwrap_or(0),
            Err(CommandError::Rejected(SpendLedgerError::Denied(mut denial))) => {
                // The caller's quote is the invoice's amount; the message names the reserved total.
                denial.quoted_amount_msats = Some(facts.decoded.amount_msats.get());
                denial.message = format!(
                    "{} (invoice {} msats + fee limit {} msats)",
                    denial.message,
                    facts.decoded.amount_msats.get(),
                    attempt.fee_limit_msats.get()
                );
                self.payment_command(
                    payment_hash,
                    PaymentCommand::DenyPayment {
                        attempt: attempt_number,
                        denial,
                    },
                )
                .await?;
                return Ok(false);
            }
            Err(error) => {
                // The reservation may or may not have been written; nothing was sent. Close the
                // attempt and release whatever may have been reserved.
                self.fail(
                    payment_hash,
                    &hash,
                    attempt_number,
                    "reservation_failed",
                    &error.to_string(),
                )
                .await?;
                return Ok(false);
            }
        };
        self.payment_command(
            payment_hash,
            PaymentCommand::RecordReservation {
                attempt: attempt_number,
                window_spend_before_msats: window_before,
            },
        )
        .await?;

        if !self.holds_lease() {
            // Not sent; whoever holds the wallet reconciles the attempt.
            return Ok(false);
        }
        // No answer in time is an unknown outcome like any other (LND may be registering it).
        let sent = match tokio::time::timeout(
            self.config.node_call_timeout,
            self.node.send(SendRequest {
                invoice: facts.invoice.clone(),
                fee_limit_msats: attempt.fee_limit_msats,
                timeout_secs: self.config.send_timeout_secs,
            }),
        )
        .await
        {
            Ok(sent) => sent,
            Err(_) => Err(NodeError::OutcomeUnknown(format!(
                "SendPaymentV2 did not answer within {:?}",
                self.config.node_call_timeout
            ))),
        };
        let mut updates = match sent {
            Ok(updates) => updates,
            Err(error @ (NodeError::AlreadyPaid | NodeError::AlreadyInFlight)) => {
                // LND's control tower already knows this hash: follow what it knows.
                self.payment_command(
                    payment_hash,
                    PaymentCommand::MarkReconcileRequired {
                        attempt: attempt_number,
                        reason: error.to_string(),
                    },
                )
                .await?;
                return Ok(true);
            }
            // LND refused before any payment existed: nothing was sent.
            Err(NodeError::InvalidInvoice(message)) | Err(NodeError::Rejected(message)) => {
                self.note_error("payment_failed", &message);
                self.fail(
                    payment_hash,
                    &hash,
                    attempt_number,
                    "rejected_by_node",
                    &message,
                )
                .await?;
                return Ok(false);
            }
            Err(error @ NodeError::AuthRefused(_)) => {
                let _ = self.node_trouble(&error);
                self.fail(
                    payment_hash,
                    &hash,
                    attempt_number,
                    "node_auth_refused",
                    &error.to_string(),
                )
                .await?;
                return Ok(false);
            }
            // Unknown, Internal, Unavailable, a deadline, a transport error: LND may have the
            // payment. Keep the reservation and find out with TrackPaymentV2.
            Err(other) => {
                self.note_error("payment_reconcile_required", &other.to_string());
                self.payment_command(
                    payment_hash,
                    PaymentCommand::MarkReconcileRequired {
                        attempt: attempt_number,
                        reason: other.to_string(),
                    },
                )
                .await?;
                return Ok(true);
            }
        };
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(false),
                next = updates.next() => next,
            };
            match next {
                Some(Ok(PaymentProgress::InFlight)) => {
                    state.send_replace(DriverState::Tracked);
                    continue;
                }
                Some(Ok(progress @ PaymentProgress::Succeeded { .. })) => {
                    self.settle(payment_hash, &hash, attempt_number, progress)
                        .await?;
                    return Ok(false);
                }
                Some(Ok(PaymentProgress::Failed { reason })) => {
                    self.note_error("payment_failed", &reason);
                    self.fail(
                        payment_hash,
                        &hash,
                        attempt_number,
                        &reason,
                        "payment failed",
                    )
                    .await?;
                    return Ok(false);
                }
                Some(Ok(PaymentProgress::NotFound)) | Some(Err(_)) | None => {
                    let reason = match next {
                        Some(Err(e)) => e.to_string(),
                        _ => "the payment stream ended without an outcome".to_owned(),
                    };
                    self.note_error("payment_reconcile_required", &reason);
                    self.payment_command(
                        payment_hash,
                        PaymentCommand::MarkReconcileRequired {
                            attempt: attempt_number,
                            reason,
                        },
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Drives a payment to an outcome: sends a requested attempt, and follows one whose outcome
    /// is unknown with TrackPaymentV2 until LND gives one; finally makes the ledger agree.
    async fn drive(
        &self,
        payment_hash: &str,
        state: &watch::Sender<DriverState>,
    ) -> anyhow::Result<()> {
        let mut delay = Backoff::new(Duration::from_millis(100), TRACK_RETRY_MAX);
        loop {
            // Never start sending (or following) once shutdown began or the wallet's lease is
            // not ours: LND keeps what it has, and the lease holder reconciles it.
            if self.shutdown.is_cancelled() || !self.holds_lease() {
                return Ok(());
            }
            let payment = self.load_payment(payment_hash).await?;
            let Some(open) = payment.open_attempt().cloned() else {
                return self.settle_ledger(&payment).await;
            };
            if open.status == AttemptStatus::Requested {
                // Whether it settled, failed or needs tracking, the next turn re-reads the journal.
                self.send_attempt(&payment, open.number, state).await?;
                if self.shutdown.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            let hash = payment
                .payment_hash()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("payment without facts"))?;
            let tracked =
                match tokio::time::timeout(self.config.node_call_timeout, self.node.track(&hash))
                    .await
                {
                    Ok(tracked) => tracked,
                    Err(_) => Err(NodeError::Unavailable(format!(
                        "TrackPaymentV2 did not answer within {:?}",
                        self.config.node_call_timeout
                    ))),
                };
            match tracked {
                Ok(mut updates) => loop {
                    let next = tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        next = updates.next() => next,
                    };
                    match next {
                        Some(Ok(PaymentProgress::InFlight)) => {
                            state.send_replace(DriverState::Tracked);
                            continue;
                        }
                        Some(Ok(progress @ PaymentProgress::Succeeded { .. })) => {
                            return self
                                .settle(payment_hash, &hash, open.number, progress)
                                .await;
                        }
                        Some(Ok(PaymentProgress::Failed { reason })) => {
                            return self
                                .fail(payment_hash, &hash, open.number, &reason, "payment failed")
                                .await;
                        }
                        Some(Ok(PaymentProgress::NotFound))
                            if self.engine.now().millis_since(payment.updated_at)
                                < u64::try_from(self.config.not_found_grace.as_millis())
                                    .unwrap_or(u64::MAX) =>
                        {
                            // LND may still be registering a send whose answer was lost.
                            break;
                        }
                        Some(Ok(PaymentProgress::NotFound)) => {
                            return self
                                .fail(
                                    payment_hash,
                                    &hash,
                                    open.number,
                                    "not_sent",
                                    "the payment never reached the node (interrupted before sending); \
                                     retry with a new request id",
                                )
                                .await;
                        }
                        Some(Err(_)) | None => break,
                    }
                },
                Err(error) => {
                    let _ = self.node_trouble(&error);
                }
            }
            if !delay.sleep(&self.shutdown).await {
                return Ok(());
            }
        }
    }
}

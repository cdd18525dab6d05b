//! The Payment aggregate: one invoice (keyed by its payment hash), paid at most once.
//!
//! ```text
//! attempt n:  requested ──reserve──▶ reserved ──LND settles──▶ succeeded (payment done for good)
//!                 │                     ├──LND fails──▶ failed ──new request──▶ attempt n+1
//!                 └──ledger refuses──▶ denied ──new request──▶ attempt n+1
//!                                       └──outcome unknown──▶ reconcile_required ──track──▶ succeeded | failed
//! ```
//! A request id is bound to exactly one attempt (its own, or the open/settled one it attached to),
//! so a retry always finds the original outcome. Only one attempt is open at a time.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::commands::{PaymentCommand, PaymentRequest};
use super::error::PaymentError;
use super::events::PaymentEvent;
use super::policy::Denial;
use super::receipt::{build_receipt, ReceiptInput, WalletReceipt};
use super::types::{DecodedInvoice, Msat, Network, PaymentHash, WalletId};
use crate::ids::{Owner, RunId};
use crate::{RuntimeAggregate, Stamped, Timestamp};

/// Where one attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    Requested,
    Reserved,
    ReconcileRequired,
    Succeeded,
    Failed,
    Denied,
}

impl AttemptStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptStatus::Requested => "requested",
            AttemptStatus::Reserved => "reserved",
            AttemptStatus::ReconcileRequired => "reconcile_required",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Denied => "denied",
        }
    }

    /// Still waiting for an outcome.
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            AttemptStatus::Requested | AttemptStatus::Reserved | AttemptStatus::ReconcileRequired
        )
    }
}

/// The invoice's facts, fixed by the first request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvoiceFacts {
    pub wallet_id: WalletId,
    pub invoice: String,
    pub invoice_hash: String,
    pub decoded: DecodedInvoice,
    pub network: Network,
}

/// One attempt to pay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    /// The request that opened the attempt (its id goes on the receipt).
    pub request_id: String,
    pub host: String,
    pub max_amount_msats: Msat,
    pub fee_limit_msats: Msat,
    pub run_id: Option<RunId>,
    pub owner: Option<Owner>,
    pub status: AttemptStatus,
    pub requested_at: Timestamp,
    pub window_spend_before_msats: Option<u64>,
    pub denial: Option<Denial>,
    pub failure_reason: Option<String>,
    pub failure_message: Option<String>,
    pub reconcile_reason: Option<String>,
}

/// A request id's binding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestBinding {
    pub attempt: u32,
    pub fingerprint: String,
    pub host: String,
    pub run_id: Option<RunId>,
    pub owner: Option<Owner>,
}

/// The settlement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    pub attempt: u32,
    pub preimage_hex: String,
    pub settled_amount_msats: u64,
    pub fee_msats: u64,
    pub paid_at_ms: i64,
    pub window_spend_after_msats: u64,
    pub receipt: WalletReceipt,
}

/// The Payment aggregate's state; also its summary (it is small).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub invoice: Option<InvoiceFacts>,
    pub attempts: Vec<Attempt>,
    pub requests: BTreeMap<String, RequestBinding>,
    pub settlement: Option<Settlement>,
    /// Number of events applied (the journal sequence).
    pub version: u64,
    pub updated_at: Timestamp,
}

impl Payment {
    pub fn exists(&self) -> bool {
        self.invoice.is_some()
    }

    pub fn payment_hash(&self) -> Option<&PaymentHash> {
        self.invoice.as_ref().map(|i| &i.decoded.payment_hash)
    }

    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    pub fn attempt(&self, number: u32) -> Option<&Attempt> {
        number
            .checked_sub(1)
            .and_then(|i| self.attempts.get(i as usize))
    }

    /// The payment's overall status: succeeded once any attempt settled, else the latest attempt's.
    pub fn status(&self) -> Option<AttemptStatus> {
        if self.settlement.is_some() {
            return Some(AttemptStatus::Succeeded);
        }
        self.current_attempt().map(|a| a.status)
    }

    /// The open attempt, if one is waiting for an outcome.
    pub fn open_attempt(&self) -> Option<&Attempt> {
        self.current_attempt()
            .filter(|a| a.status.is_open() && self.settlement.is_none())
    }

    fn attempt_mut(&mut self, number: u32) -> Option<&mut Attempt> {
        number
            .checked_sub(1)
            .and_then(|i| self.attempts.get_mut(i as usize))
    }

    fn current_number(&self) -> u32 {
        self.attempts.len() as u32
    }

    fn check_current(&self, attempt: u32) -> Result<&Attempt, PaymentError> {
        let current = self.current_attempt().ok_or(PaymentError::NotFound)?;
        if current.number != attempt {
            return Err(PaymentError::AttemptMismatch {
                current: current.number,
                got: attempt,
            });
        }
        Ok(current)
    }

    fn request(
        &self,
        at: Timestamp,
        request: PaymentRequest,
    ) -> Result<Option<PaymentEvent>, PaymentError> {
        if request.request_id.trim().is_empty() || request.request_id.len() > 256 {
            return Err(PaymentError::InvalidRequest(
                "request id must be 1 to 256 characters".into(),
            ));
        }
        if let Some(binding) = self.requests.get(&request.request_id) {
            return if binding.fingerprint == request.fingerprint {
                Ok(None)
            } else {
                Err(PaymentError::RequestConflict {
                    request_id: request.request_id,
                })
            };
        }
        if let Some(facts) = &self.invoice {
            if facts.decoded.payment_hash != request.decoded.payment_hash
                || facts.wallet_id != request.wallet_id
            {
                return Err(PaymentError::InvoiceMismatch);
            }
        }
        let attach_to = if self.settlement.is_some() {
            self.settlement.as_ref().map(|s| s.attempt)
        } else {
            self.open_attempt().map(|a| a.number)
        };
        if let Some(attempt) = attach_to {
            return Ok(Some(PaymentEvent::PaymentRequestAttached {
                attempt,
                request_id: request.request_id,
                request_fingerprint: request.fingerprint,
                host: request.host,
                max_amount_msats: request.max_amount_msats,
                run_id: request.run_id,
                owner: request.owner,
                attached_at: at,
            }));
        }
        if at.unix_micros() / 1000 >= request.decoded.expires_at_ms() {
            return Err(PaymentError::InvoiceExpired);
        }
        Ok(Some(PaymentEvent::PaymentRequested {
            attempt: self.current_number() + 1,
            request_id: request.request_id,
            request_fingerprint: request.fingerprint,
            wallet_id: request.wallet_id,
            host: request.host,
            invoice: request.invoice,
            invoice_hash: request.invoice_hash,
            decoded: request.decoded,
            network: request.network,
            max_amount_msats: request.max_amount_msats,
            fee_limit_msats: request.fee_limit_msats,
            run_id: request.run_id,
            owner: request.owner,
            requested_at: at,
        }))
    }

    fn handle_command(
        &self,
        at: Timestamp,
        command: PaymentCommand,
    ) -> Result<Option<PaymentEvent>, PaymentError> {
        if let PaymentCommand::RequestPayment(request) = command {
            return self.request(at, *request);
        }
        let facts = self.invoice.as_ref().ok_or(PaymentError::NotFound)?;
        match command {
            PaymentCommand::RequestPayment(_) => unreachable!("handled above"),
            PaymentCommand::RecordReservation {
                attempt,
                window_spend_before_msats,
            } => {
                let current = self.check_current(attempt)?;
                match current.status {
                    AttemptStatus::Requested => Ok(Some(PaymentEvent::PaymentReserved {
                        attempt,
                        window_spend_before_msats,
                        reserved_at: at,
                    })),
                    AttemptStatus::Reserved | AttemptStatus::ReconcileRequired => Ok(None),
                    closed => Err(PaymentError::AttemptClosed {
                        attempt,
                        status: closed.as_str(),
                    }),
                }
            }
            PaymentCommand::DenyPayment { attempt, denial } => {
                let current = self.check_current(attempt)?;
                match current.status {
                    AttemptStatus::Requested => Ok(Some(PaymentEvent::PaymentDenied {
                        attempt,
                        denial,
                        denied_at: at,
                    })),
                    AttemptStatus::Denied => Ok(None),
                    other => Err(PaymentError::AttemptClosed {
                        attempt,
                        status: other.as_str(),
                    }),
                }
            }
            PaymentCommand::RecordSuccess {
                attempt,
                preimage_hex,
                settled_amount_msats,
                fee_msats,
                paid_at_ms,
                window_spend_after_msats,
            } => {
                if self.settlement.is_some() {
                    return Ok(None);
                }
                let record = self.attempt(attempt).ok_or(PaymentError::AttemptMismatch {
                    current: self.current_number(),
                    got: attempt,
                })?;
                if !facts.decoded.payment_hash.matches_preimage(&preimage_hex) {
                    return Err(PaymentError::PreimageMismatch);
                }
                let preimage_hex = preimage_hex.trim().to_ascii_lowercase();
                let receipt = build_receipt(&ReceiptInput {
                    request_id: &record.request_id,
                    wallet_id: facts.wallet_id.as_str(),
                    host: &record.host,
                    payment_id: facts.decoded.payment_hash.as_str(),
                    invoice_hash: &facts.invoice_hash,
                    quoted_amount_msats: facts.decoded.amount_msats.get(),
                    settled_amount_msats,
                    preimage_hex: &preimage_hex,
                    paid_at_ms,
                });
                Ok(Some(PaymentEvent::PaymentSucceeded {
                    attempt,
                    preimage_hex,
                    settled_amount_msats,
                    fee_msats,
                    paid_at_ms,
                    window_spend_after_msats,
                    receipt,
                    succeeded_at: at,
                }))
            }
            PaymentCommand::RecordFailure {
                attempt,
                reason,
                message,
            } => {
                if self.settlement.is_some() {
                    return Ok(None);
                }
                let record = self.attempt(attempt).ok_or(PaymentError::AttemptMismatch {
                    current: self.current_number(),
                    got: attempt,
                })?;
                match record.status {
                    status if status.is_open() => Ok(Some(PaymentEvent::PaymentFailed {
                        attempt,
                        reason,
                        message,
                        failed_at: at,
                    })),
                    _ => Ok(None),
                }
            }
            PaymentCommand::MarkReconcileRequired { attempt, reason } => {
                let current = self.check_current(attempt)?;
                match current.status {
                    AttemptStatus::Requested | AttemptStatus::Reserved
                        if self.settlement.is_none() =>
                    {
                        Ok(Some(PaymentEvent::PaymentReconcileRequired {
                            attempt,
                            reason,
                            marked_at: at,
                        }))
                    }
                    _ => Ok(None),
                }
            }
        }
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "lightning_payment";
    type Command = Stamped<PaymentCommand>;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let Some(event) = self.handle_command(command.at, command.command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        self.updated_at = event.at();
        match event {
            PaymentEvent::PaymentRequested {
                attempt,
                request_id,
                request_fingerprint,
                wallet_id,
                host,
                invoice,
                invoice_hash,
                decoded,
                network,
                max_amount_msats,
                fee_limit_msats,
                run_id,
                owner,
                requested_at,
            } => {
                if self.invoice.is_none() {
                    self.invoice = Some(InvoiceFacts {
                        wallet_id,
                        invoice,
                        invoice_hash,
                        decoded,
                        network,
                    });
                }
                self.requests.insert(
                    request_id.clone(),
                    RequestBinding {
                        attempt,
                        fingerprint: request_fingerprint,
                        host: host.clone(),
                        run_id: run_id.clone(),
                        owner: owner.clone(),
                    },
                );
                self.attempts.push(Attempt {
                    number: attempt,
                    request_id,
                    host,
                    max_amount_msats,
                    fee_limit_msats,
                    run_id,
                    owner,
                    status: AttemptStatus::Requested,
                    requested_at,
                    window_spend_before_msats: None,
                    denial: None,
                    failure_reason: None,
                    failure_message: None,
                    reconcile_reason: None,
                });
            }
            PaymentEvent::PaymentRequestAttached {
                attempt,
                request_id,
                request_fingerprint,
                host,
                run_id,
                owner,
                ..
            } => {
                self.requests.insert(
                    request_id,
                    RequestBinding {
                        attempt,
                        fingerprint: request_fingerprint,
                        host,
                        run_id,
                        owner,
                    },
                );
            }
            PaymentEvent::PaymentReserved {
                attempt,
                window_spend_before_msats,
                ..
            } => {
                if let Some(a) = self.attempt_mut(attempt) {
                    a.status = AttemptStatus::Reserved;
                    a.window_spend_before_msats = Some(window_spend_before_msats);
                }
            }
            PaymentEvent::PaymentDenied {
                attempt, denial, ..
            } => {
                if let Some(a) = self.attempt_mut(attempt) {
                    a.status = AttemptStatus::Denied;
                    a.denial = Some(denial);
                }
            }
            PaymentEvent::PaymentSucceeded {
                attempt,
                preimage_hex,
                settled_amount_msats,
                fee_msats,
                paid_at_ms,
                window_spend_after_msats,
                receipt,
                ..
            } => {
                if let Some(a) = self.attempt_mut(attempt) {
                    a.status = AttemptStatus::Succeeded;
                }
                self.settlement = Some(Settlement {
                    attempt,
                    preimage_hex,
                    settled_amount_msats,
                    fee_msats,
                    paid_at_ms,
                    window_spend_after_msats,
                    receipt,
                });
            }
            PaymentEvent::PaymentFailed {
                attempt,
                reason,
                message,
                ..
            } => {
                if let Some(a) = self.attempt_mut(attempt) {
                    a.status = AttemptStatus::Failed;
                    a.failure_reason = Some(reason);
                    a.failure_message = Some(message);
                }
            }
            PaymentEvent::PaymentReconcileRequired {
                attempt, reason, ..
            } => {
                if let Some(a) = self.attempt_mut(attempt) {
                    a.status = AttemptStatus::ReconcileRequired;
                    a.reconcile_reason = Some(reason);
                }
            }
        }
    }
}

impl RuntimeAggregate for Payment {
    type Action = PaymentCommand;
    type Summary = Payment;

    fn summary(&self) -> Payment {
        self.clone()
    }
}

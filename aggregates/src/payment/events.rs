//! Events of a payment. `event_type()` strings and variant/field names are a storage format and
//! never change.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::policy::Denial;
use super::receipt::WalletReceipt;
use super::types::{sha256_hex, DecodedInvoice, Msat, Network, WalletId};
use crate::ids::{Owner, RunId};
use crate::Timestamp;

/// Current version of every payment event shape.
pub const PAYMENT_EVENT_VERSION: &str = "1.0";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// A new attempt to pay the invoice (attempt 1, or the next one after a failed or denied
    /// attempt). Binds `request_id` to the attempt.
    PaymentRequested {
        attempt: u32,
        request_id: String,
        request_fingerprint: String,
        wallet_id: WalletId,
        host: String,
        invoice: String,
        invoice_hash: String,
        decoded: DecodedInvoice,
        network: Network,
        max_amount_msats: Msat,
        fee_limit_msats: Msat,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        requested_at: Timestamp,
    },
    /// Another request asked for the same invoice while an attempt was open or after it settled:
    /// it shares that attempt's outcome instead of paying again.
    PaymentRequestAttached {
        attempt: u32,
        request_id: String,
        request_fingerprint: String,
        host: String,
        max_amount_msats: Msat,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        attached_at: Timestamp,
    },
    /// The spend ledger reserved the amount: the attempt may now be sent to LND.
    PaymentReserved {
        attempt: u32,
        window_spend_before_msats: u64,
        reserved_at: Timestamp,
    },
    /// The spend ledger refused the reservation; nothing was sent.
    PaymentDenied {
        attempt: u32,
        denial: Denial,
        denied_at: Timestamp,
    },
    /// LND reports the payment settled.
    PaymentSucceeded {
        attempt: u32,
        preimage_hex: String,
        settled_amount_msats: u64,
        fee_msats: u64,
        paid_at_ms: i64,
        window_spend_after_msats: u64,
        receipt: WalletReceipt,
        succeeded_at: Timestamp,
    },
    /// LND reports the payment failed for good (`reason` is LND's failure reason, e.g.
    /// `FAILURE_REASON_NO_ROUTE`), or it never reached LND before a crash (`not_sent`).
    PaymentFailed {
        attempt: u32,
        reason: String,
        message: String,
        failed_at: Timestamp,
    },
    /// The outcome is unknown (the stream to LND broke, LND was unreachable mid-payment): the
    /// reservation is kept and the payment is reconciled with TrackPaymentV2 before anything else.
    PaymentReconcileRequired {
        attempt: u32,
        reason: String,
        marked_at: Timestamp,
    },
}

impl PaymentEvent {
    pub fn at(&self) -> Timestamp {
        match self {
            PaymentEvent::PaymentRequested { requested_at, .. } => *requested_at,
            PaymentEvent::PaymentRequestAttached { attached_at, .. } => *attached_at,
            PaymentEvent::PaymentReserved { reserved_at, .. } => *reserved_at,
            PaymentEvent::PaymentDenied { denied_at, .. } => *denied_at,
            PaymentEvent::PaymentSucceeded { succeeded_at, .. } => *succeeded_at,
            PaymentEvent::PaymentFailed { failed_at, .. } => *failed_at,
            PaymentEvent::PaymentReconcileRequired { marked_at, .. } => *marked_at,
        }
    }

    pub fn attempt(&self) -> u32 {
        match self {
            PaymentEvent::PaymentRequested { attempt, .. }
            | PaymentEvent::PaymentRequestAttached { attempt, .. }
            | PaymentEvent::PaymentReserved { attempt, .. }
            | PaymentEvent::PaymentDenied { attempt, .. }
            | PaymentEvent::PaymentSucceeded { attempt, .. }
            | PaymentEvent::PaymentFailed { attempt, .. }
            | PaymentEvent::PaymentReconcileRequired { attempt, .. } => *attempt,
        }
    }

    /// The event with the payment preimage replaced by its SHA-256 (`sha256:<hex>`), for exports
    /// and anything else that must not carry a bearer proof of payment.
    pub fn redacted(&self) -> PaymentEvent {
        match self {
            PaymentEvent::PaymentSucceeded {
                attempt,
                preimage_hex,
                settled_amount_msats,
                fee_msats,
                paid_at_ms,
                window_spend_after_msats,
                receipt,
                succeeded_at,
            } => PaymentEvent::PaymentSucceeded {
                attempt: *attempt,
                preimage_hex: format!("sha256:{}", sha256_hex(&preimage_hex.to_lowercase())),
                settled_amount_msats: *settled_amount_msats,
                fee_msats: *fee_msats,
                paid_at_ms: *paid_at_ms,
                window_spend_after_msats: *window_spend_after_msats,
                receipt: receipt.clone(),
                succeeded_at: *succeeded_at,
            },
            other => other.clone(),
        }
    }
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            PaymentEvent::PaymentRequested { .. } => "payment.requested",
            PaymentEvent::PaymentRequestAttached { .. } => "payment.request_attached",
            PaymentEvent::PaymentReserved { .. } => "payment.reserved",
            PaymentEvent::PaymentDenied { .. } => "payment.denied",
            PaymentEvent::PaymentSucceeded { .. } => "payment.succeeded",
            PaymentEvent::PaymentFailed { .. } => "payment.failed",
            PaymentEvent::PaymentReconcileRequired { .. } => "payment.reconcile_required",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        PAYMENT_EVENT_VERSION.to_owned()
    }
}

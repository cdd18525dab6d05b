//! Commands a payment accepts.

use super::policy::Denial;
use super::types::{DecodedInvoice, Msat, Network, WalletId};
use crate::ids::{Owner, RunId};

/// A request to pay an invoice, after the executor decoded it and checked host and amount caps.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentRequest {
    /// The idempotency key (`x-request-id`, else the body's `requestId`).
    pub request_id: String,
    /// Hash of what the request asked for (wallet, host, invoice hash, max amount): the same
    /// request id with another fingerprint is a conflict.
    pub fingerprint: String,
    pub wallet_id: WalletId,
    pub host: String,
    pub invoice: String,
    pub invoice_hash: String,
    pub decoded: DecodedInvoice,
    pub network: Network,
    pub max_amount_msats: Msat,
    pub fee_limit_msats: Msat,
    pub run_id: Option<RunId>,
    pub owner: Option<Owner>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PaymentCommand {
    /// Pay the invoice: opens attempt 1 (or the next after a failed/denied one), or attaches the
    /// request to the open or settled attempt, or (same request id) changes nothing.
    RequestPayment(Box<PaymentRequest>),
    /// The spend ledger reserved the attempt's amount.
    RecordReservation {
        attempt: u32,
        window_spend_before_msats: u64,
    },
    /// The spend ledger refused the attempt.
    DenyPayment { attempt: u32, denial: Denial },
    /// LND settled the payment. Accepted whatever the state (LND's word on money that moved wins),
    /// except that a second success changes nothing.
    RecordSuccess {
        attempt: u32,
        preimage_hex: String,
        settled_amount_msats: u64,
        fee_msats: u64,
        paid_at_ms: i64,
        window_spend_after_msats: u64,
    },
    /// LND failed the payment for good (or it never reached LND).
    RecordFailure {
        attempt: u32,
        reason: String,
        message: String,
    },
    /// The outcome is unknown; reconcile before anything else may pay this invoice.
    MarkReconcileRequired { attempt: u32, reason: String },
}

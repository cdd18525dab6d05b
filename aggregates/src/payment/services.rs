//! What the payment lane needs from a Lightning node. Defined here, in the domain's words;
//! implemented over LND's gRPC API in the `lightning` crate (LND's types never leave it).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::types::{DecodedInvoice, Msat, Network, PaymentHash};

/// The node's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub identity_pubkey: String,
    pub alias: String,
    pub network: Option<Network>,
    pub block_height: u32,
    pub synced_to_chain: bool,
}

/// The node's balances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBalance {
    /// Confirmed on-chain balance.
    pub onchain_confirmed_sats: u64,
    /// Spendable in channels (local balance).
    pub channel_local_msats: u64,
}

/// Where a payment stands at the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentProgress {
    /// The node has never seen this payment hash (TrackPaymentV2: NotFound).
    NotFound,
    /// Routing; no final outcome yet.
    InFlight,
    Succeeded {
        preimage_hex: String,
        value_msats: u64,
        fee_msats: u64,
        /// When the settling HTLC resolved (Unix ms), if the node says.
        settled_at_ms: Option<i64>,
    },
    /// Failed for good; `reason` is the node's failure reason (e.g. `FAILURE_REASON_NO_ROUTE`).
    Failed { reason: String },
}

impl PaymentProgress {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PaymentProgress::Succeeded { .. } | PaymentProgress::Failed { .. }
        )
    }
}

/// What to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendRequest {
    pub invoice: String,
    pub fee_limit_msats: Msat,
    /// How long the node may keep trying routes.
    pub timeout_secs: u32,
}

/// An invoice the node created (for the L402 gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedInvoice {
    pub payment_hash: PaymentHash,
    pub payment_request: String,
}

/// Node failures callers branch on. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node could not be reached (down, TLS, timeout) or failed internally: nothing is known.
    #[error("node unreachable: {0}")]
    Unavailable(String),
    /// The node refused the credentials (macaroon rejected or lacking a permission): the call
    /// was refused before it did anything.
    #[error("node refused the credentials: {0}")]
    AuthRefused(String),
    /// A call that may have taken effect failed without saying whether it did (a transport
    /// error, `Unknown`, `Internal`, `Unavailable`, a deadline): the caller must find out.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The node cannot decode the invoice.
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// The node refuses to send because the payment hash is already settled.
    #[error("invoice already paid")]
    AlreadyPaid,
    /// The node refuses to send because a payment for the hash is in flight.
    #[error("payment already in flight")]
    AlreadyInFlight,
    /// The node rejected the request for another reason.
    #[error("node rejected the request: {0}")]
    Rejected(String),
    /// A payment update stream ended or broke before a final outcome.
    #[error("payment stream broke: {0}")]
    StreamBroken(String),
}

/// A stream of updates for one payment.
#[async_trait]
pub trait PaymentUpdates: Send {
    /// The next update; `None` when the stream ended. A stream that ends without a final
    /// update leaves the outcome unknown.
    async fn next(&mut self) -> Option<Result<PaymentProgress, NodeError>>;
}

/// A Lightning node.
#[async_trait]
pub trait LightningNode: Send + Sync + 'static {
    async fn info(&self) -> Result<NodeInfo, NodeError>;
    async fn balance(&self) -> Result<NodeBalance, NodeError>;
    async fn decode(&self, invoice: &str) -> Result<DecodedInvoice, NodeError>;
    /// Starts paying (router SendPaymentV2) and streams its progress.
    async fn send(&self, request: SendRequest) -> Result<Box<dyn PaymentUpdates>, NodeError>;
    /// Follows a payment by hash (router TrackPaymentV2). A hash the node never saw yields
    /// `PaymentProgress::NotFound`.
    async fn track(&self, payment_hash: &PaymentHash)
        -> Result<Box<dyn PaymentUpdates>, NodeError>;
    /// Creates an invoice (AddInvoice); `preimage` lets the caller choose it.
    async fn add_invoice(
        &self,
        amount_msats: Msat,
        memo: &str,
        expiry_secs: u64,
        preimage: Option<[u8; 32]>,
    ) -> Result<CreatedInvoice, NodeError>;
}

//! The payment lane's domain: Bolt11 payments as aggregates in the journal, paid at most once,
//! under spend caps.
//!
//! # Layout
//! - [`types`]: payment hashes, wallet ids, millisatoshis, networks, decoded invoices.
//! - [`policy`]: host allowlist and per-request caps, and the [`Denial`] shape the API reports.
//! - [`aggregate`]: the [`Payment`] aggregate (one per payment hash) with its attempts.
//! - [`ledger`]: the [`SpendLedger`] aggregate (one per wallet) that serialises reservations.
//! - [`receipt`]: the `openagents.lightning.wallet_receipt.v1` receipt.
//! - [`services`]: the [`LightningNode`](services::LightningNode) trait the executor pays through.

pub mod aggregate;
mod commands;
mod error;
mod events;
pub mod ledger;
pub mod policy;
pub mod receipt;
pub mod services;
pub mod types;

pub use aggregate::{Attempt, AttemptStatus, InvoiceFacts, Payment, RequestBinding, Settlement};
pub use commands::{PaymentCommand, PaymentRequest};
pub use error::PaymentError;
pub use events::{PaymentEvent, PAYMENT_EVENT_VERSION};
pub use ledger::{SpendLedger, SpendLedgerCommand, SpendLedgerError, SpendLedgerEvent};
pub use policy::{Denial, DenialCode, SpendCaps, SpendPolicy};
pub use types::{DecodedInvoice, Msat, Network, PaymentHash, WalletId};

#[cfg(test)]
mod tests;

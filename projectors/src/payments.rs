//! Payments: topic `runtime.payments`, one document per payment, `runtime/payment:<payment_id>`
//! (the payment hash), owned by the payment's owner (a payment without one is delivered to
//! nobody). The document never carries the preimage (only its SHA-256), the invoice text or any
//! credential.

use aggregates::ids::Owner;
use aggregates::payment::types::sha256_hex;
use aggregates::payment::PaymentEvent;
use aggregates::Timestamp;
use cqrs_es::persist::SerializedEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{DocOwner, ProjectedEvent, Projection, ProjectionError, RuntimeSource};

/// The sync topic.
pub const TOPIC: &str = "runtime.payments";

/// The document key of a payment (its id is the payment hash).
pub fn doc_key(payment_id: &str) -> String {
    format!("runtime/payment:{payment_id}")
}

/// The read-model document. Field order is the payload's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDoc {
    pub payment_id: String,
    pub wallet_id: String,
    /// `requested`, `reserved`, `reconcile_required`, `succeeded`, `failed` or `denied` (of the
    /// latest attempt; `succeeded` once any attempt settled).
    pub status: String,
    pub attempt: u32,
    pub host: String,
    pub invoice_hash: String,
    pub network: String,
    pub quoted_amount_msats: u64,
    pub settled_amount_msats: Option<u64>,
    pub fee_msats: Option<u64>,
    pub run_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub owner_guest_scope: Option<String>,
    pub request_ids: Vec<String>,
    pub failure_reason: Option<String>,
    pub denial_code: Option<String>,
    pub receipt_id: Option<String>,
    pub preimage_sha256: Option<String>,
    pub paid_at_ms: Option<i64>,
    pub requested_at: String,
    pub updated_at: String,
    pub runtime_source: Option<RuntimeSource>,
    pub projection_version: u32,
    pub projected_at: String,
}

impl PaymentDoc {
    /// The JSON payload stored in the sync stream.
    pub fn payload(&self) -> Value {
        serde_json::to_value(self).expect("a PaymentDoc always serialises")
    }

    /// Reads a stored payload back.
    ///
    /// # Errors
    /// When the payload is not a payment document.
    pub fn from_payload(payload: &Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(payload.clone())
    }
}

fn set_owner(doc: &mut PaymentDoc, owner: &Option<Owner>) {
    if let Some(owner) = owner {
        doc.owner_user_id = owner.user_id().map(|u| u.to_string());
        doc.owner_guest_scope = owner.guest_scope().map(|g| g.to_string());
    }
}

/// Folds one Payment event into the document (`None`: the payment's first event).
/// `payment_id` is the aggregate id. Pure: same inputs, same document.
pub fn apply(doc: Option<PaymentDoc>, payment_id: &str, event: &PaymentEvent) -> PaymentDoc {
    let mut doc = doc.unwrap_or_else(|| PaymentDoc {
        payment_id: payment_id.to_owned(),
        ..PaymentDoc::default()
    });
    doc.updated_at = event.at().to_rfc3339();
    match event {
        PaymentEvent::PaymentRequested {
            attempt,
            request_id,
            wallet_id,
            host,
            invoice_hash,
            decoded,
            network,
            run_id,
            owner,
            requested_at,
            ..
        } => {
            if doc.requested_at.is_empty() {
                doc.requested_at = requested_at.to_rfc3339();
            }
            doc.wallet_id = wallet_id.to_string();
            doc.status = "requested".into();
            doc.attempt = *attempt;
            doc.host = host.clone();
            doc.invoice_hash = invoice_hash.clone();
            doc.network = network.as_str().into();
            doc.quoted_amount_msats = decoded.amount_msats.get();
            if doc.run_id.is_none() {
                doc.run_id = run_id.as_ref().map(|r| r.to_string());
            }
            if doc.owner_user_id.is_none() && doc.owner_guest_scope.is_none() {
                set_owner(&mut doc, owner);
            }
            doc.request_ids.push(request_id.clone());
            doc.failure_reason = None;
            doc.denial_code = None;
        }
        PaymentEvent::PaymentRequestAttached { request_id, .. } => {
            doc.request_ids.push(request_id.clone());
        }
        PaymentEvent::PaymentReserved { .. } => {
            if doc.status != "succeeded" {
                doc.status = "reserved".into();
            }
        }
        PaymentEvent::PaymentDenied { denial, .. } => {
            doc.status = "denied".into();
            doc.denial_code = Some(denial.code.as_str().into());
        }
        PaymentEvent::PaymentSucceeded {
            preimage_hex,
            settled_amount_msats,
            fee_msats,
            paid_at_ms,
            receipt,
            ..
        } => {
            doc.status = "succeeded".into();
            doc.settled_amount_msats = Some(*settled_amount_msats);
            doc.fee_msats = Some(*fee_msats);
            doc.paid_at_ms = Some(*paid_at_ms);
            doc.receipt_id = Some(receipt.receipt_id.clone());
            doc.preimage_sha256 = Some(sha256_hex(&preimage_hex.to_lowercase()));
            doc.failure_reason = None;
        }
        PaymentEvent::PaymentFailed { reason, .. } => {
            if doc.status != "succeeded" {
                doc.status = "failed".into();
                doc.failure_reason = Some(reason.clone());
            }
        }
        PaymentEvent::PaymentReconcileRequired { .. } => {
            if doc.status != "succeeded" {
                doc.status = "reconcile_required".into();
            }
        }
    }
    doc
}

/// The payments read model.
pub struct Payments;

impl Projection for Payments {
    type Doc = PaymentDoc;
    const NAME: &'static str = "payments";
    const TOPIC: &'static str = TOPIC;
    const TABLE: &'static str = "sync_payments";
    const VERSION: u32 = 1;
    const AGGREGATE_TYPES: &'static [&'static str] = &["lightning_payment"];

    fn doc_key(event: &SerializedEvent) -> Option<String> {
        Some(doc_key(&event.aggregate_id))
    }

    fn apply(
        slot: &mut Option<PaymentDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let payment_event: PaymentEvent = event.decode()?;
        let mut doc = apply(slot.take(), &event.event.aggregate_id, &payment_event);
        doc.runtime_source = Some(event.source());
        doc.projection_version = Self::VERSION;
        doc.projected_at = event.recorded_at.to_rfc3339();
        *slot = Some(doc);
        Ok(true)
    }

    fn owner(doc: &PaymentDoc) -> DocOwner {
        DocOwner {
            user_id: doc.owner_user_id.clone(),
            guest_scope: doc.owner_guest_scope.clone(),
            org_id: None,
        }
    }

    fn projected_at(doc: &PaymentDoc) -> Timestamp {
        doc.projected_at.parse().unwrap_or(Timestamp::EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use aggregates::ids::{RunId, UserId};
    use aggregates::payment::receipt::{build_receipt, ReceiptInput};
    use aggregates::payment::{DecodedInvoice, Msat, Network, PaymentHash, WalletId};
    use aggregates::Timestamp;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_771_000_000 + s).unwrap()
    }

    #[test]
    fn folds_a_paid_payment_into_a_document_without_the_preimage() {
        let hash = PaymentHash::parse(&"ab".repeat(32)).unwrap();
        let preimage = "cd".repeat(32);
        let events = vec![
            PaymentEvent::PaymentRequested {
                attempt: 1,
                request_id: "req-1".into(),
                request_fingerprint: "fp".into(),
                wallet_id: WalletId::parse("w").unwrap(),
                host: "sats4ai.com".into(),
                invoice: "lnbcrt1...".into(),
                invoice_hash: "ih".into(),
                decoded: DecodedInvoice {
                    payment_hash: hash.clone(),
                    destination: "02".into(),
                    amount_msats: Msat(1_000),
                    created_at_unix: 0,
                    expiry_secs: 3600,
                    description: String::new(),
                },
                network: Network::Regtest,
                max_amount_msats: Msat(2_000),
                fee_limit_msats: Msat(10),
                run_id: Some(RunId::parse("run_1").unwrap()),
                owner: Some(Owner::User(UserId::parse("7").unwrap())),
                requested_at: at(0),
            },
            PaymentEvent::PaymentRequestAttached {
                attempt: 1,
                request_id: "req-2".into(),
                request_fingerprint: "fp2".into(),
                host: "sats4ai.com".into(),
                max_amount_msats: Msat(2_000),
                run_id: None,
                owner: None,
                attached_at: at(1),
            },
            PaymentEvent::PaymentReserved {
                attempt: 1,
                window_spend_before_msats: 0,
                reserved_at: at(1),
            },
            PaymentEvent::PaymentSucceeded {
                attempt: 1,
                preimage_hex: preimage.clone(),
                settled_amount_msats: 1_000,
                fee_msats: 3,
                paid_at_ms: 42,
                window_spend_after_msats: 1_000,
                receipt: build_receipt(&ReceiptInput {
                    request_id: "req-1",
                    wallet_id: "w",
                    host: "sats4ai.com",
                    payment_id: hash.as_str(),
                    invoice_hash: "ih",
                    quoted_amount_msats: 1_000,
                    settled_amount_msats: 1_000,
                    preimage_hex: &preimage,
                    paid_at_ms: 42,
                }),
                succeeded_at: at(2),
            },
        ];
        let mut doc = None;
        for event in &events {
            doc = Some(apply(doc, hash.as_str(), event));
        }
        let doc = doc.unwrap();
        assert_eq!(doc_key(&doc.payment_id), format!("runtime/payment:{hash}"));
        assert_eq!(doc.status, "succeeded");
        assert_eq!(doc.request_ids, ["req-1", "req-2"]);
        assert_eq!(doc.owner_user_id.as_deref(), Some("7"));
        assert_eq!(doc.run_id.as_deref(), Some("run_1"));
        assert_eq!(doc.settled_amount_msats, Some(1_000));
        assert_eq!(doc.preimage_sha256, Some(sha256_hex(&preimage)));
        assert!(doc.receipt_id.as_deref().unwrap().starts_with("lwr_"));
        let payload = doc.payload();
        assert!(!payload.to_string().contains(&preimage));
        assert!(!payload.to_string().contains("lnbcrt1"));
        assert_eq!(PaymentDoc::from_payload(&payload).unwrap(), doc);
    }
}

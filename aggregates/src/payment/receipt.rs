//! The payment receipt `openagents.lightning.wallet_receipt.v1`, byte-compatible with the original
//! executor: a fixed field order, `canonicalJsonSha256` = hex SHA-256 of that JSON and
//! `receiptId` = `lwr_` + its first 24 hex characters.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::types::sha256_hex;

pub const RECEIPT_VERSION: &str = "openagents.lightning.wallet_receipt.v1";
pub const RECEIPT_RAIL: &str = "lightning";
pub const RECEIPT_ASSET_ID: &str = "BTC_LN";

/// What a receipt is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptInput<'a> {
    pub request_id: &'a str,
    pub wallet_id: &'a str,
    pub host: &'a str,
    pub payment_id: &'a str,
    /// Hex SHA-256 of the invoice text.
    pub invoice_hash: &'a str,
    pub quoted_amount_msats: u64,
    pub settled_amount_msats: u64,
    pub preimage_hex: &'a str,
    pub paid_at_ms: i64,
}

/// A built receipt. Serialises like the original's `{ ...canonicalPayload, receiptId,
/// canonicalJsonSha256 }`: the twelve canonical fields in order, then the id and the hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WalletReceipt {
    pub receipt_version: String,
    pub request_id: String,
    pub wallet_id: String,
    pub host: String,
    pub payment_id: String,
    pub invoice_hash: String,
    pub quoted_amount_msats: u64,
    pub settled_amount_msats: u64,
    pub preimage_sha256: String,
    pub paid_at_ms: i64,
    pub rail: String,
    pub asset_id: String,
    pub receipt_id: String,
    pub canonical_json_sha256: String,
}

/// The canonical JSON text the receipt hash covers: these twelve fields in exactly this order,
/// compact, as JavaScript's `JSON.stringify` writes them.
pub fn canonical_receipt_json(input: &ReceiptInput<'_>) -> String {
    let payload: Value = json!({
        "receiptVersion": RECEIPT_VERSION,
        "requestId": input.request_id.trim(),
        "walletId": input.wallet_id.trim(),
        "host": input.host.trim().to_lowercase(),
        "paymentId": input.payment_id.trim(),
        "invoiceHash": input.invoice_hash.trim().to_lowercase(),
        "quotedAmountMsats": input.quoted_amount_msats,
        "settledAmountMsats": input.settled_amount_msats,
        "preimageSha256": sha256_hex(&input.preimage_hex.trim().to_lowercase()),
        "paidAtMs": input.paid_at_ms.max(0),
        "rail": RECEIPT_RAIL,
        "assetId": RECEIPT_ASSET_ID,
    });
    // serde_json keeps insertion order (feature `preserve_order`), so this is the field order above.
    payload.to_string()
}

/// Builds the receipt.
pub fn build_receipt(input: &ReceiptInput<'_>) -> WalletReceipt {
    let canonical = canonical_receipt_json(input);
    let hash = sha256_hex(&canonical);
    WalletReceipt {
        receipt_version: RECEIPT_VERSION.to_owned(),
        receipt_id: format!("lwr_{}", &hash[..24]),
        request_id: input.request_id.trim().to_owned(),
        wallet_id: input.wallet_id.trim().to_owned(),
        host: input.host.trim().to_lowercase(),
        payment_id: input.payment_id.trim().to_owned(),
        invoice_hash: input.invoice_hash.trim().to_lowercase(),
        quoted_amount_msats: input.quoted_amount_msats,
        settled_amount_msats: input.settled_amount_msats,
        preimage_sha256: sha256_hex(&input.preimage_hex.trim().to_lowercase()),
        paid_at_ms: input.paid_at_ms.max(0),
        rail: RECEIPT_RAIL.to_owned(),
        asset_id: RECEIPT_ASSET_ID.to_owned(),
        canonical_json_sha256: hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ReceiptInput<'static> {
        ReceiptInput {
            request_id: "req-1",
            wallet_id: "wallet-1",
            host: " Sats4AI.com ",
            payment_id: "pay-1",
            invoice_hash: "ABCDEF",
            quoted_amount_msats: 1000,
            settled_amount_msats: 1000,
            preimage_hex: "AA",
            paid_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn canonical_json_has_the_original_field_order_and_normalisation() {
        let text = canonical_receipt_json(&input());
        let preimage_sha = sha256_hex("aa");
        assert_eq!(
            text,
            format!(
                "{{\"receiptVersion\":\"openagents.lightning.wallet_receipt.v1\",\"requestId\":\"req-1\",\
                 \"walletId\":\"wallet-1\",\"host\":\"sats4ai.com\",\"paymentId\":\"pay-1\",\
                 \"invoiceHash\":\"abcdef\",\"quotedAmountMsats\":1000,\"settledAmountMsats\":1000,\
                 \"preimageSha256\":\"{preimage_sha}\",\"paidAtMs\":1700000000000,\"rail\":\"lightning\",\
                 \"assetId\":\"BTC_LN\"}}"
            )
        );
    }

    #[test]
    fn receipt_id_is_lwr_and_the_hash_prefix() {
        let receipt = build_receipt(&input());
        let hash = sha256_hex(&canonical_receipt_json(&input()));
        assert_eq!(receipt.canonical_json_sha256, hash);
        assert_eq!(receipt.receipt_id, format!("lwr_{}", &hash[..24]));
        assert_eq!(receipt.host, "sats4ai.com");
        let mut other = input();
        other.settled_amount_msats = 1001;
        assert_ne!(build_receipt(&other).canonical_json_sha256, hash);
    }
}

//! Value types of the payment lane: payment hashes, wallet ids, millisatoshi amounts, networks and the
//! decoded facts about an invoice. Validated once, in their constructors.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Why a value is not a valid payment-lane value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("payment hash must be 64 hex characters")]
    PaymentHash,
    #[error("preimage must be 64 hex characters")]
    Preimage,
    #[error("wallet id must be 1 to 128 characters of ASCII letters, digits, - _ . :")]
    WalletId,
}

/// A payment hash: 32 bytes, carried as 64 lowercase hex characters. It identifies a payment (one
/// invoice can only ever be paid once under its hash) and is the Payment aggregate's id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PaymentHash(String);

impl PaymentHash {
    /// # Errors
    /// [`ValueError::PaymentHash`] unless `value` is 64 hex characters (any case).
    pub fn parse(value: &str) -> Result<Self, ValueError> {
        let value = value.trim().to_ascii_lowercase();
        if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(value))
        } else {
            Err(ValueError::PaymentHash)
        }
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `preimage_hex` hashes to this payment hash.
    pub fn matches_preimage(&self, preimage_hex: &str) -> bool {
        match hex::decode(preimage_hex.trim()) {
            Ok(bytes) if bytes.len() == 32 => hex::encode(Sha256::digest(&bytes)) == self.0,
            _ => false,
        }
    }
}

impl fmt::Display for PaymentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PaymentHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// The wallet (one LND node's spending identity) a payment is made from; the SpendLedger's id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WalletId(String);

impl WalletId {
    /// # Errors
    /// [`ValueError::WalletId`] for empty, long or oddly shaped ids.
    pub fn parse(value: &str) -> Result<Self, ValueError> {
        let value = value.trim();
        if !value.is_empty()
            && value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValueError::WalletId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WalletId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WalletId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// An amount in millisatoshis.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Msat(pub u64);

impl Msat {
    pub const ZERO: Msat = Msat(0);

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, other: Msat) -> Msat {
        Msat(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Msat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msats", self.0)
    }
}

/// The Bitcoin network a node runs on or an invoice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    Mainnet,
    Testnet,
    Signet,
    Regtest,
    Simnet,
}

impl Network {
    pub fn as_str(&self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
            Network::Simnet => "simnet",
        }
    }

    /// LND's `GetInfo.chains[].network` names (`mainnet`, `testnet`, `testnet4`, `signet`, `regtest`,
    /// `simnet`).
    pub fn from_lnd(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "mainnet" | "bitcoin" => Some(Network::Mainnet),
            "testnet" | "testnet3" | "testnet4" => Some(Network::Testnet),
            "signet" => Some(Network::Signet),
            "regtest" => Some(Network::Regtest),
            "simnet" => Some(Network::Simnet),
            _ => None,
        }
    }

    /// The BOLT 11 currency prefix of invoices on this network (after `ln`).
    pub fn invoice_currency(&self) -> &'static str {
        match self {
            Network::Mainnet => "bc",
            Network::Testnet => "tb",
            Network::Signet => "tbs",
            Network::Regtest => "bcrt",
            Network::Simnet => "sb",
        }
    }

    /// The network a BOLT 11 invoice string is for, read from its human-readable prefix
    /// (`lnbc…` mainnet, `lntb…` testnet, `lntbs…` signet, `lnbcrt…` regtest, `lnsb…` simnet).
    /// `None` when the text does not look like a BOLT 11 invoice. This is only a local sanity check:
    /// LND's `DecodePayReq` stays the authority on everything else in the invoice.
    pub fn of_invoice(invoice: &str) -> Option<Self> {
        let lower = invoice.trim().to_ascii_lowercase();
        let lower = lower.strip_prefix("lightning:").unwrap_or(&lower);
        let hrp = &lower[..lower.rfind('1')?];
        let rest = hrp.strip_prefix("ln")?;
        let currency: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        match currency.as_str() {
            "bc" => Some(Network::Mainnet),
            "tb" => Some(Network::Testnet),
            "tbs" => Some(Network::Signet),
            "bcrt" => Some(Network::Regtest),
            "sb" => Some(Network::Simnet),
            _ => None,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What LND's `DecodePayReq` says about an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodedInvoice {
    pub payment_hash: PaymentHash,
    pub destination: String,
    /// The amount the invoice asks for; 0 for an amountless invoice.
    pub amount_msats: Msat,
    /// Invoice creation time, Unix seconds.
    pub created_at_unix: i64,
    /// Seconds after creation when the invoice expires.
    pub expiry_secs: u64,
    pub description: String,
}

impl DecodedInvoice {
    /// Unix milliseconds at which the invoice expires.
    pub fn expires_at_ms(&self) -> i64 {
        self.created_at_unix.saturating_mul(1000).saturating_add(
            i64::try_from(self.expiry_secs)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(1000),
        )
    }
}

/// Lowercase hex SHA-256 of `text`'s bytes (invoice hashes, preimage hashes in receipts).
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_network_from_the_invoice_prefix() {
        assert_eq!(
            Network::of_invoice("lnbc2500u1pvjluez"),
            Some(Network::Mainnet)
        );
        assert_eq!(
            Network::of_invoice("lntb20m1pvjluez"),
            Some(Network::Testnet)
        );
        assert_eq!(Network::of_invoice("lntbs1pvjluez"), Some(Network::Signet));
        assert_eq!(
            Network::of_invoice("LNBCRT10u1pvjluez"),
            Some(Network::Regtest)
        );
        assert_eq!(Network::of_invoice("lnsb1pvjluez"), Some(Network::Simnet));
        assert_eq!(
            Network::of_invoice("lightning:lnbc1pvjluez"),
            Some(Network::Mainnet)
        );
        assert_eq!(Network::of_invoice("bitcoin:bc1qxyz"), None);
        assert_eq!(Network::of_invoice("hello"), None);
    }

    #[test]
    fn payment_hashes_are_normalised_and_checked_against_preimages() {
        let preimage = "00".repeat(32);
        let hash = sha2::Sha256::digest([0u8; 32]);
        let upper = hex::encode(hash).to_ascii_uppercase();
        let parsed = PaymentHash::parse(&upper).unwrap();
        assert_eq!(parsed.as_str(), hex::encode(hash));
        assert!(parsed.matches_preimage(&preimage));
        assert!(!parsed.matches_preimage(&"01".repeat(32)));
        assert!(PaymentHash::parse("abc").is_err());
    }

    #[test]
    fn wallet_ids_are_validated() {
        assert!(WalletId::parse("openagents-ep212").is_ok());
        assert!(WalletId::parse("").is_err());
        assert!(WalletId::parse("a b").is_err());
    }
}

//! Receipt signatures (`openagents.receipt_signature.v1`): deterministic BIP-340 Schnorr over
//! secp256k1 with no auxiliary randomness (`secp256k1_schnorr_no_aux_rand`, i.e. BIP-340 with
//! `aux_rand` = 32 zero bytes, what libsecp256k1 does when given none; Nostr-compatible). The signed
//! message is the 32 raw bytes of the SHA-256 digest whose hex is `signed_sha256` (for a receipt,
//! its `canonical_json_sha256`). Anyone holding the x-only public key verifies it.

use std::fmt;

use k256::schnorr::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// `schema` of a signature object.
pub const SIGNATURE_SCHEMA: &str = "openagents.receipt_signature.v1";
/// `scheme` of a signature object.
pub const SIGNATURE_SCHEME: &str = "secp256k1_schnorr_no_aux_rand";

/// A detached signature over a SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptSignature {
    pub schema: String,
    pub scheme: String,
    /// x-only public key, 64 hex characters.
    pub signer_pubkey: String,
    /// The signed digest, 64 hex characters.
    pub signed_sha256: String,
    /// 64-byte BIP-340 signature, 128 hex characters.
    pub signature_hex: String,
}

/// Why a key or signature could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signing key must be 32 bytes of hex (a secp256k1 secret key)")]
    BadSecretKey,
    #[error("signed_sha256 must be 64 hex characters")]
    BadDigest,
    #[error("unsupported signature schema or scheme")]
    Unsupported,
    #[error("signer_pubkey is not an x-only secp256k1 public key")]
    BadPublicKey,
    #[error("signature_hex is not a 64-byte signature")]
    BadSignature,
}

/// A configured signing key. Cheap to clone.
#[derive(Clone)]
pub struct ReceiptSigner {
    key: SigningKey,
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("signer_pubkey", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

fn digest_bytes(hex_digest: &str) -> Result<[u8; 32], SignatureError> {
    let bytes = hex::decode(hex_digest).map_err(|_| SignatureError::BadDigest)?;
    bytes.try_into().map_err(|_| SignatureError::BadDigest)
}

impl ReceiptSigner {
    /// A signer from a 32-byte secret key in hex (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`SignatureError::BadSecretKey`].
    pub fn from_secret_hex(secret: &str) -> Result<Self, SignatureError> {
        let bytes = hex::decode(secret.trim()).map_err(|_| SignatureError::BadSecretKey)?;
        let key = SigningKey::from_bytes(&bytes).map_err(|_| SignatureError::BadSecretKey)?;
        Ok(Self { key })
    }

    /// The x-only public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs the digest whose hex is `sha256_hex`.
    ///
    /// # Errors
    /// [`SignatureError::BadDigest`] if `sha256_hex` is not 32 bytes of hex.
    pub fn sign_sha256_hex(&self, sha256_hex: &str) -> Result<ReceiptSignature, SignatureError> {
        let digest = digest_bytes(sha256_hex)?;
        let signature = self
            .key
            .sign_raw(&digest, &[0u8; 32])
            .map_err(|_| SignatureError::BadDigest)?;
        Ok(ReceiptSignature {
            schema: SIGNATURE_SCHEMA.into(),
            scheme: SIGNATURE_SCHEME.into(),
            signer_pubkey: self.public_key_hex(),
            signed_sha256: sha256_hex.to_owned(),
            signature_hex: hex::encode(signature.to_bytes()),
        })
    }
}

/// Whether `signature` is a valid signature of `signed_sha256` by `signer_pubkey`.
///
/// # Errors
/// [`SignatureError`] when a field is malformed or the scheme unknown (a well-formed signature
/// that does not verify is `Ok(false)`).
pub fn verify_receipt_signature(signature: &ReceiptSignature) -> Result<bool, SignatureError> {
    if signature.schema != SIGNATURE_SCHEMA || signature.scheme != SIGNATURE_SCHEME {
        return Err(SignatureError::Unsupported);
    }
    let digest = digest_bytes(&signature.signed_sha256)?;
    let key_bytes =
        hex::decode(&signature.signer_pubkey).map_err(|_| SignatureError::BadPublicKey)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| SignatureError::BadPublicKey)?;
    let sig_bytes =
        hex::decode(&signature.signature_hex).map_err(|_| SignatureError::BadSignature)?;
    let sig =
        Signature::try_from(sig_bytes.as_slice()).map_err(|_| SignatureError::BadSignature)?;
    Ok(key.verify_raw(&digest, &sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIP-340 test vector 0: secret key 3, aux_rand all zeros, message all zeros.
    #[test]
    fn reproduces_the_bip340_zero_aux_rand_vector() {
        let signer = ReceiptSigner::from_secret_hex(
            "0000000000000000000000000000000000000000000000000000000000000003",
        )
        .unwrap();
        assert_eq!(
            signer.public_key_hex(),
            "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9"
        );
        let signature = signer.sign_sha256_hex(&"00".repeat(32)).unwrap();
        assert_eq!(
            signature.signature_hex,
            "e907831f80848d1069a5371b402410364bdf1c5f8307b0084c55f1ce2dca8215\
             25f66a4a85ea8b71e482a74f382d2ce5ebeee8fdb2172f477df4900d310536c0"
        );
        assert!(verify_receipt_signature(&signature).unwrap());
    }

    #[test]
    fn signatures_are_deterministic_and_bound_to_the_digest_and_key() {
        let signer = ReceiptSigner::from_secret_hex(&"11".repeat(32)).unwrap();
        let digest = aggregates::canonical::sha256_hex(b"receipt");
        let first = signer.sign_sha256_hex(&digest).unwrap();
        assert_eq!(first, signer.sign_sha256_hex(&digest).unwrap());
        assert!(verify_receipt_signature(&first).unwrap());

        let mut other_digest = first.clone();
        other_digest.signed_sha256 = aggregates::canonical::sha256_hex(b"other");
        assert!(!verify_receipt_signature(&other_digest).unwrap());

        let mut other_key = first.clone();
        other_key.signer_pubkey = ReceiptSigner::from_secret_hex(&"22".repeat(32))
            .unwrap()
            .public_key_hex();
        assert!(!verify_receipt_signature(&other_key).unwrap());

        let mut flipped = first;
        flipped.signature_hex.replace_range(0..2, "ff");
        assert!(matches!(
            verify_receipt_signature(&flipped),
            Ok(false) | Err(_)
        ));
    }

    #[test]
    fn malformed_keys_and_digests_are_errors() {
        assert_eq!(
            ReceiptSigner::from_secret_hex("zz").unwrap_err(),
            SignatureError::BadSecretKey
        );
        assert_eq!(
            ReceiptSigner::from_secret_hex(&"00".repeat(32)).unwrap_err(),
            SignatureError::BadSecretKey
        );
        let signer = ReceiptSigner::from_secret_hex(&"11".repeat(32)).unwrap();
        assert_eq!(
            signer.sign_sha256_hex("abc").unwrap_err(),
            SignatureError::BadDigest
        );
    }
}

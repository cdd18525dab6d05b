//! Signed checkpoints (`openagents.audit_checkpoint.v1`): `{journal_id, tree_size, root_hash,
//! timestamp}` signed with the runtime's audit key, BIP-340 Schnorr over secp256k1 like receipts
//! (`openagents.receipt_signature.v1`, the one signature scheme of the runtime). The signed digest
//! is the SHA-256 of the canonical JSON of the checkpoint without its `signature` member.

use std::path::Path;

use aggregates::canonical::canonical_digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::merkle::{parse_hash, Hash};
use crate::artifacts::signature::{verify_receipt_signature, ReceiptSignature, ReceiptSigner};

/// `schema` of a checkpoint.
pub const CHECKPOINT_SCHEMA: &str = "openagents.audit_checkpoint.v1";

/// A signed tree head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub schema: String,
    /// The journal's identity (generated with its tree; a rebuilt or other journal has another).
    pub journal_id: String,
    pub tree_size: u64,
    /// The RFC 9162 root of the first `tree_size` leaves, 64 hex characters.
    pub root_hash: String,
    /// When it was taken (RFC 3339, UTC).
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ReceiptSignature>,
}

/// Why a checkpoint is not trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("the checkpoint is not signed")]
    Unsigned,
    #[error("the checkpoint's signature does not verify: {0}")]
    BadSignature(String),
    #[error("the checkpoint is signed by {signer}, which is not a trusted key")]
    Untrusted { signer: String },
}

impl Checkpoint {
    /// An unsigned checkpoint.
    pub fn new(journal_id: &str, tree_size: u64, root: &Hash, timestamp: &str) -> Self {
        Self {
            schema: CHECKPOINT_SCHEMA.to_owned(),
            journal_id: journal_id.to_owned(),
            tree_size,
            root_hash: hex::encode(root),
            timestamp: timestamp.to_owned(),
            signature: None,
        }
    }

    /// Hex SHA-256 of the canonical checkpoint without `signature`: what the signature signs.
    pub fn digest(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a checkpoint serialises");
        if let Some(map) = value.as_object_mut() {
            map.remove("signature");
        }
        hex::encode(canonical_digest(&value))
    }

    /// Signs this checkpoint with `key`.
    pub fn signed(mut self, key: &AuditKey) -> Self {
        self.signature = None;
        let digest = self.digest();
        self.signature = Some(
            key.signer
                .sign_sha256_hex(&digest)
                .expect("a checkpoint digest is 32 bytes"),
        );
        self
    }

    /// The root as bytes.
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`].
    pub fn root(&self) -> Result<Hash, CheckpointError> {
        parse_hash(&self.root_hash)
            .map_err(|e| CheckpointError::Malformed(format!("root_hash {e}")))
    }

    /// Who signed it (x-only public key hex), if signed.
    pub fn signer(&self) -> Option<&str> {
        self.signature.as_ref().map(|s| s.signer_pubkey.as_str())
    }

    /// Checks the schema, the signature over this content, and that the signer is one of
    /// `trusted` (x-only public keys, hex; compared case-insensitively).
    ///
    /// # Errors
    /// The reason it is not trusted.
    pub fn verify(&self, trusted: &[String]) -> Result<(), CheckpointError> {
        if self.schema != CHECKPOINT_SCHEMA {
            return Err(CheckpointError::Malformed(format!(
                "schema {:?}",
                self.schema
            )));
        }
        self.root()?;
        let signature = self.signature.as_ref().ok_or(CheckpointError::Unsigned)?;
        let digest = self.digest();
        if signature.signed_sha256 != digest {
            return Err(CheckpointError::BadSignature(format!(
                "it signs {}, the checkpoint hashes to {digest}",
                signature.signed_sha256
            )));
        }
        match verify_receipt_signature(signature) {
            Ok(true) => {}
            Ok(false) => {
                return Err(CheckpointError::BadSignature(format!(
                    "not a signature of the checkpoint by {}",
                    signature.signer_pubkey
                )))
            }
            Err(e) => return Err(CheckpointError::BadSignature(e.to_string())),
        }
        if !trusted
            .iter()
            .any(|k| k.trim().eq_ignore_ascii_case(&signature.signer_pubkey))
        {
            return Err(CheckpointError::Untrusted {
                signer: signature.signer_pubkey.clone(),
            });
        }
        Ok(())
    }

    /// Parses a checkpoint from JSON (a file or an HTTP body).
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`].
    pub fn from_json(value: &Value) -> Result<Self, CheckpointError> {
        serde_json::from_value(value.clone()).map_err(|e| CheckpointError::Malformed(e.to_string()))
    }
}

/// The runtime's audit key: signs checkpoints. A secp256k1 secret key, stored as 64 hex
/// characters.
#[derive(Clone, Debug)]
pub struct AuditKey {
    signer: ReceiptSigner,
}

/// File name of the generated audit key inside the data directory (embedded journal).
pub const AUDIT_KEY_FILE: &str = "audit-signing.key";

impl AuditKey {
    /// From 32 bytes of hex.
    ///
    /// # Errors
    /// When the key is malformed.
    pub fn from_hex(secret: &str) -> Result<Self, String> {
        ReceiptSigner::from_secret_hex(secret)
            .map(|signer| Self { signer })
            .map_err(|e| format!("audit key: {e}"))
    }

    /// A fresh random key and its secret hex.
    pub fn generate() -> (Self, String) {
        loop {
            let secret = hex::encode(rand::random::<[u8; 32]>());
            if let Ok(key) = Self::from_hex(&secret) {
                return (key, secret);
            }
        }
    }

    /// The key in `path`, generated there (mode 0600) when the file does not exist; `true` when
    /// generated now.
    ///
    /// # Errors
    /// When the file cannot be read or written, or holds no valid key.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::from_hex(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, secret) = Self::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                write_private(path, &secret)
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
                Ok((key, true))
            }
            Err(e) => Err(format!("read {}: {e}", path.display())),
        }
    }

    /// The x-only public key, hex: what verifiers and witnesses trust.
    pub fn public_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_verifies_only_under_its_key_and_content() {
        let key = AuditKey::from_hex(&"11".repeat(32)).unwrap();
        let other = AuditKey::from_hex(&"22".repeat(32)).unwrap();
        let cp = Checkpoint::new("j1", 7, &[3u8; 32], "2026-12-06T00:00:00Z").signed(&key);
        let trusted = vec![key.public_key_hex()];
        cp.verify(&trusted).unwrap();
        assert_eq!(
            cp.verify(&[other.public_key_hex()]),
            Err(CheckpointError::Untrusted {
                signer: key.public_key_hex()
            })
        );
        let mut forged = cp.clone();
        forged.tree_size = 8;
        assert!(matches!(
            forged.verify(&trusted),
            Err(CheckpointError::BadSignature(_))
        ));
        let mut unsigned = cp.clone();
        unsigned.signature = None;
        assert_eq!(unsigned.verify(&trusted), Err(CheckpointError::Unsigned));
        // Re-signed by another key: valid signature, untrusted signer.
        let resigned = cp.clone().signed(&other);
        assert!(matches!(
            resigned.verify(&trusted),
            Err(CheckpointError::Untrusted { .. })
        ));
        let json = serde_json::to_value(&cp).unwrap();
        assert_eq!(Checkpoint::from_json(&json).unwrap(), cp);
    }

    #[test]
    fn the_key_file_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_KEY_FILE);
        let (a, created) = AuditKey::load_or_generate(&path).unwrap();
        assert!(created);
        let (b, created) = AuditKey::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_key_hex(), b.public_key_hex());
    }
}

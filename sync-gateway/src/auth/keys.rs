//! Sync-token keys: HS256 secrets by `kid` (rotation: one active signing key plus older
//! verification keys), and EdDSA / RS256 public keys for deployments with asymmetric tokens.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// A key tokens are verified with.
#[derive(Clone)]
pub struct VerifyKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The key tokens are minted with.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Bad key configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key entry {0:?} must look like kid=value")]
    Entry(String),
    #[error("key {kid}: {message}")]
    Invalid { kid: String, message: String },
    #[error("key id {0} is configured twice")]
    Duplicate(String),
}

/// Every verification key by `kid`, plus the key used for tokens without a `kid`.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyKey>,
    /// Used when a token has no `kid` header (the active signing key's kid, or the only key).
    default_kid: Option<String>,
    signing: Option<SigningKey>,
}

/// Decodes a secret: `base64:` prefix for binary secrets, else the UTF-8 bytes as given.
fn secret_bytes(kid: &str, secret: &str) -> Result<Vec<u8>, KeyError> {
    match secret.strip_prefix("base64:") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| KeyError::Invalid {
                kid: kid.to_owned(),
                message: format!("bad base64 secret: {e}"),
            }),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// Splits `kid=value`.
pub fn split_entry(entry: &str) -> Result<(String, String), KeyError> {
    match entry.split_once('=') {
        Some((kid, value)) if !kid.trim().is_empty() && !value.trim().is_empty() => {
            Ok((kid.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(KeyError::Entry(entry.to_owned())),
    }
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, kid: &str, key: VerifyKey) -> Result<(), KeyError> {
        if self.keys.insert(kid.to_owned(), key).is_some() {
            return Err(KeyError::Duplicate(kid.to_owned()));
        }
        if self.keys.len() == 1 && self.default_kid.is_none() {
            self.default_kid = Some(kid.to_owned());
        } else if self.signing.is_none() && self.keys.len() > 1 {
            // Several keys and none active: a token must name its key.
            self.default_kid = None;
        }
        Ok(())
    }

    /// The active HS256 key: tokens are minted with it and verified with it.
    ///
    /// # Errors
    /// [`KeyError`] for an empty secret or a duplicate kid.
    pub fn with_active_hs256(mut self, kid: &str, secret: &str) -> Result<Self, KeyError> {
        let bytes = secret_bytes(kid, secret)?;
        if bytes.len() < 16 {
            return Err(KeyError::Invalid {
                kid: kid.to_owned(),
                message: "HS256 secrets must be at least 16 bytes".into(),
            });
        }
        self.insert(
            kid,
            VerifyKey {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(&bytes),
            },
        )?;
        self.signing = Some(SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(&bytes),
        });
        self.default_kid = Some(kid.to_owned());
        Ok(self)
    }

    /// An older HS256 key still accepted for verification (rotation).
    ///
    /// # Errors
    /// [`KeyError`] for a bad secret or a duplicate kid.
    pub fn with_hs256(mut self, kid: &str, secret: &str) -> Result<Self, KeyError> {
        let bytes = secret_bytes(kid, secret)?;
        self.insert(
            kid,
            VerifyKey {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(&bytes),
            },
        )?;
        Ok(self)
    }

    /// A PEM public key (Ed25519 → EdDSA, RSA → RS256).
    ///
    /// # Errors
    /// [`KeyError::Invalid`] when the PEM is neither.
    pub fn with_public_pem(mut self, kid: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let key = if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            VerifyKey {
                algorithm: Algorithm::EdDSA,
                key,
            }
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            VerifyKey {
                algorithm: Algorithm::RS256,
                key,
            }
        } else {
            return Err(KeyError::Invalid {
                kid: kid.to_owned(),
                message: "not an Ed25519 or RSA public key in PEM".into(),
            });
        };
        self.insert(kid, key)?;
        Ok(self)
    }

    /// An asymmetric private key (PEM, Ed25519 or RSA) to mint with, e.g. for `token mint`
    /// in a deployment whose gateways only hold the public key.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] when the PEM is neither.
    pub fn with_signing_pem(mut self, kid: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let (algorithm, key) = if let Ok(key) = EncodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, key)
        } else if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else {
            return Err(KeyError::Invalid {
                kid: kid.to_owned(),
                message: "not an Ed25519 or RSA private key in PEM".into(),
            });
        };
        self.signing = Some(SigningKey {
            kid: kid.to_owned(),
            algorithm,
            key,
        });
        Ok(self)
    }

    /// The key for a token's `kid` header (or the default key when it has none).
    pub fn verify_key(&self, kid: Option<&str>) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.keys.get(kid),
            None => self.default_kid.as_deref().and_then(|k| self.keys.get(k)),
        }
    }

    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.signing.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

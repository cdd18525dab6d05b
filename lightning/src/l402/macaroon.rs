//! L402 macaroons: the libmacaroons V2 binary format with Aperture's identifier layout
//! (`version: u16 BE = 0 ‖ payment_hash[32] ‖ token_id[32]`) and HMAC-SHA256 signature chaining,
//! so standard L402 clients can read the payment hash out of the token. First-party caveats only.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const VERSION_2: u8 = 2;
const FIELD_EOS: u8 = 0;
const FIELD_LOCATION: u8 = 1;
const FIELD_IDENTIFIER: u8 = 2;
const FIELD_SIGNATURE: u8 = 6;

/// Why a presented macaroon is not acceptable. Messages never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacaroonError {
    #[error("the macaroon is not valid base64 or not a V2 macaroon")]
    Malformed,
    #[error("the macaroon's signature does not verify")]
    BadSignature,
    #[error("the macaroon has a caveat that is not satisfied: {0}")]
    Caveat(String),
}

/// A minted or parsed macaroon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macaroon {
    pub location: String,
    pub identifier: Vec<u8>,
    pub caveats: Vec<String>,
    pub signature: [u8; 32],
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn derive_key(root_key: &[u8]) -> [u8; 32] {
    hmac(b"macaroons-key-generator", root_key)
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_field(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.push(kind);
    put_varint(out, data.len());
    out.extend_from_slice(data);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, MacaroonError> {
        let b = *self.bytes.get(self.at).ok_or(MacaroonError::Malformed)?;
        self.at += 1;
        Ok(b)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn varint(&mut self) -> Result<usize, MacaroonError> {
        let mut value = 0usize;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MacaroonError::Malformed)
    }

    fn data(&mut self) -> Result<&'a [u8], MacaroonError> {
        let len = self.varint()?;
        let end = self.at.checked_add(len).ok_or(MacaroonError::Malformed)?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(MacaroonError::Malformed)?;
        self.at = end;
        Ok(slice)
    }
}

impl Macaroon {
    /// Mints a macaroon under `root_key`.
    pub fn mint(
        root_key: &[u8],
        location: &str,
        identifier: Vec<u8>,
        caveats: Vec<String>,
    ) -> Self {
        let mut signature = hmac(&derive_key(root_key), &identifier);
        for caveat in &caveats {
            signature = hmac(&signature, caveat.as_bytes());
        }
        Self {
            location: location.to_owned(),
            identifier,
            caveats,
            signature,
        }
    }

    /// Checks the signature chain against `root_key` (constant-time comparison).
    pub fn verify_signature(&self, root_key: &[u8]) -> Result<(), MacaroonError> {
        let expected = Self::mint(
            root_key,
            &self.location,
            self.identifier.clone(),
            self.caveats.clone(),
        );
        if bool::from(expected.signature.ct_eq(&self.signature)) {
            Ok(())
        } else {
            Err(MacaroonError::BadSignature)
        }
    }

    /// The V2 binary serialisation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION_2];
        if !self.location.is_empty() {
            put_field(&mut out, FIELD_LOCATION, self.location.as_bytes());
        }
        put_field(&mut out, FIELD_IDENTIFIER, &self.identifier);
        out.push(FIELD_EOS);
        for caveat in &self.caveats {
            put_field(&mut out, FIELD_IDENTIFIER, caveat.as_bytes());
            out.push(FIELD_EOS);
        }
        out.push(FIELD_EOS);
        put_field(&mut out, FIELD_SIGNATURE, &self.signature);
        out
    }

    /// Standard base64 of the binary form (what goes in `WWW-Authenticate` and `Authorization`).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// Parses base64 (standard or URL-safe, padded or not) V2 macaroon bytes.
    ///
    /// # Errors
    /// [`MacaroonError::Malformed`].
    pub fn from_base64(text: &str) -> Result<Self, MacaroonError> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
            .or_else(|_| URL_SAFE.decode(text))
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| MacaroonError::Malformed)?;
        Self::from_bytes(&bytes)
    }

    /// Parses V2 binary.
    ///
    /// # Errors
    /// [`MacaroonError::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MacaroonError> {
        let mut r = Reader { bytes, at: 0 };
        if r.byte()? != VERSION_2 {
            return Err(MacaroonError::Malformed);
        }
        let mut location = String::new();
        if r.peek() == Some(FIELD_LOCATION) {
            r.byte()?;
            location =
                String::from_utf8(r.data()?.to_vec()).map_err(|_| MacaroonError::Malformed)?;
        }
        if r.byte()? != FIELD_IDENTIFIER {
            return Err(MacaroonError::Malformed);
        }
        let identifier = r.data()?.to_vec();
        if r.byte()? != FIELD_EOS {
            return Err(MacaroonError::Malformed);
        }
        let mut caveats = Vec::new();
        loop {
            match r.byte()? {
                FIELD_EOS => break,
                FIELD_LOCATION => {
                    // Third-party caveats are not supported.
                    return Err(MacaroonError::Malformed);
                }
                FIELD_IDENTIFIER => {
                    let caveat = String::from_utf8(r.data()?.to_vec())
                        .map_err(|_| MacaroonError::Malformed)?;
                    match r.byte()? {
                        FIELD_EOS => caveats.push(caveat),
                        _ => return Err(MacaroonError::Malformed),
                    }
                }
                _ => return Err(MacaroonError::Malformed),
            }
        }
        if r.byte()? != FIELD_SIGNATURE {
            return Err(MacaroonError::Malformed);
        }
        let signature: [u8; 32] = r.data()?.try_into().map_err(|_| MacaroonError::Malformed)?;
        if r.at != bytes.len() {
            return Err(MacaroonError::Malformed);
        }
        Ok(Self {
            location,
            identifier,
            caveats,
            signature,
        })
    }

    /// Aperture's identifier: version 0, the payment hash, a token id.
    pub fn l402_identifier(payment_hash: &[u8; 32], token_id: &[u8; 32]) -> Vec<u8> {
        let mut id = vec![0u8, 0u8];
        id.extend_from_slice(payment_hash);
        id.extend_from_slice(token_id);
        id
    }

    /// The payment hash in an Aperture identifier.
    pub fn payment_hash(&self) -> Option<[u8; 32]> {
        if self.identifier.len() != 66 || self.identifier[..2] != [0, 0] {
            return None;
        }
        self.identifier[2..34].try_into().ok()
    }

    /// The value of the first caveat `key=value`.
    pub fn caveat(&self, key: &str) -> Option<&str> {
        self.caveats
            .iter()
            .find_map(|c| c.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_serialises_parses_and_verifies() {
        let id = Macaroon::l402_identifier(&[7; 32], &[9; 32]);
        let mac = Macaroon::mint(
            b"root",
            "openagents",
            id,
            vec!["services=pw:0".into(), "valid_until=99".into()],
        );
        let parsed = Macaroon::from_base64(&mac.to_base64()).unwrap();
        assert_eq!(parsed, mac);
        assert!(parsed.verify_signature(b"root").is_ok());
        assert_eq!(
            parsed.verify_signature(b"other"),
            Err(MacaroonError::BadSignature)
        );
        assert_eq!(parsed.payment_hash(), Some([7; 32]));
        assert_eq!(parsed.caveat("services"), Some("pw:0"));
        assert_eq!(parsed.caveat("valid_until"), Some("99"));
    }

    #[test]
    fn tampering_with_a_caveat_breaks_the_signature() {
        let mut mac = Macaroon::mint(b"root", "", vec![1, 2, 3], vec!["services=a:0".into()]);
        mac.caveats[0] = "services=b:0".into();
        assert_eq!(
            mac.verify_signature(b"root"),
            Err(MacaroonError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(Macaroon::from_base64("!!!"), Err(MacaroonError::Malformed));
        assert_eq!(Macaroon::from_bytes(&[2, 9]), Err(MacaroonError::Malformed));
        let mut bytes = Macaroon::mint(b"k", "", vec![1], vec![]).to_bytes();
        bytes.push(0);
        assert_eq!(Macaroon::from_bytes(&bytes), Err(MacaroonError::Malformed));
    }
}

//! An event's leaf in the audit tree, and the salted commitments that stand in for secrets.
//!
//! ```text
//! leaf_data(e)  = canonical_json({"chain_hash": e.chain_hash, "disclosed_hash": D(e),
//!                                 "schema": "openagents.audit_leaf.v1"})
//! leaf_hash(e)  = SHA-256(0x00 || leaf_data(e))                         (RFC 9162 leaf)
//! D(e)          = content hash (openagents.event_chain.v1 rules) of the event with every
//!                 secret field replaced by its commitment; = content_hash when it has none
//! commitment(v) = "redacted:sha256:" || hex(SHA-256(salt || canonical_json(v)))
//! salt          = HMAC-SHA256(redaction_key, "openagents.redaction.v1\n" || aggregate_type ||
//!                 "\n" || aggregate_id || "\n" || sequence || "\n" || json_pointer)
//! ```
//! A secret field is an object member (in the payload or the metadata, at any depth) whose key is
//! one of [`SECRET_KEYS`] (a payment preimage, credentials). The redaction key is the journal's
//! own (stored with the tree), so commitments are the same every time the journal is read, the
//! tree can be rebuilt from the journal, and nobody outside the database can test a guess.

use std::sync::LazyLock;

use aho_corasick::packed;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use aggregates::canonical::{prefixed_hex, write_canonical};
use aggregates::chain::EventContent;

use super::merkle::{leaf_hash, Hash};

/// `schema` of a leaf.
pub const LEAF_SCHEMA: &str = "openagents.audit_leaf.v1";
/// Name of the redaction construction.
pub const REDACTION_SCHEME: &str = "openagents.redaction.v1";
/// What a redacted value starts with.
pub const REDACTED_PREFIX: &str = "redacted:sha256:";

/// Object keys whose values never leave the journal (exports, bundles over HTTP).
pub const SECRET_KEYS: &[&str] = &[
    "preimage",
    "preimage_hex",
    "macaroon",
    "macaroon_hex",
    "credential",
    "credentials",
    "password",
    "secret",
    "api_key",
    "access_token",
    "refresh_token",
    "auth_token",
    "authorization",
    "private_key",
];

/// Whether `key` names a secret.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// Whether stored JSON text may hold a secret field (a cheap scan before parsing): whether one of
/// [`SECRET_KEYS`] appears between two double quotes. One pass over the text for all the keys at
/// once (exports and the tree call this for every event's payload and metadata).
pub fn may_hold_secrets(json_text: &str) -> bool {
    // Searched for as `key"` with the packed (SIMD) searcher, which tells the keys apart by their
    // first bytes; a match counts only after a quote. The search reports leftmost matches without
    // overlap, which misses none that counts: a key is `[a-z_]+` (a test checks), so no match can
    // start inside another before its closing quote, nor two start at one place.
    static KEYS_AND_CLOSING_QUOTE: LazyLock<packed::Searcher> = LazyLock::new(|| {
        packed::Searcher::new(SECRET_KEYS.iter().map(|key| format!("{key}\"")))
            .expect("a handful of short literal patterns always build")
    });
    let bytes = json_text.as_bytes();
    KEYS_AND_CLOSING_QUOTE
        .find_iter(bytes)
        .any(|found| found.start() > 0 && bytes[found.start() - 1] == b'"')
}

/// Whether `value` holds a secret field not yet redacted.
pub fn has_secret(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (is_secret_key(k) && !v.as_str().is_some_and(|s| s.starts_with(REDACTED_PREFIX)))
                || has_secret(v)
        }),
        Value::Array(items) => items.iter().any(has_secret),
        _ => false,
    }
}

/// The journal's redaction key (32 bytes). Never exported.
#[derive(Clone)]
pub struct RedactionKey([u8; 32]);

impl std::fmt::Debug for RedactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactionKey(<redacted>)")
    }
}

impl RedactionKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// From its stored hex.
    ///
    /// # Errors
    /// When `text` is not 32 bytes of hex.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| e.to_string())?;
        Ok(Self(
            bytes
                .try_into()
                .map_err(|_| "a redaction key is 32 bytes".to_owned())?,
        ))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn salt(&self, at: &EventRef<'_>, pointer: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(REDACTION_SCHEME.as_bytes());
        for part in [at.aggregate_type, at.aggregate_id] {
            mac.update(b"\n");
            mac.update(part.as_bytes());
        }
        mac.update(format!("\n{}\n", at.sequence).as_bytes());
        mac.update(pointer.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Which event a field belongs to (its salt depends on it).
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
}

/// `commitment(v)` for a value with the given salt.
pub fn commitment(salt: &[u8; 32], value: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    write_canonical(value, &mut hasher).expect("hashing cannot fail");
    prefixed_hex(REDACTED_PREFIX, &hasher.finalize())
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(
    value: &mut Value,
    pointer: &mut String,
    key: &RedactionKey,
    at: &EventRef<'_>,
    out: &mut Vec<String>,
) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_pointer(k));
                let already = v.as_str().is_some_and(|s| s.starts_with(REDACTED_PREFIX));
                if is_secret_key(k) && !already {
                    *v = Value::String(commitment(&key.salt(at, pointer), v));
                    out.push(pointer.clone());
                } else {
                    walk(v, pointer, key, at, out);
                }
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                walk(item, pointer, key, at, out);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Replaces every secret field of `payload` and `metadata` with its commitment, in place; the
/// JSON pointers of the replaced fields (`/payload/...`, `/metadata/...`), empty when none.
pub fn redact(
    key: &RedactionKey,
    at: EventRef<'_>,
    payload: &mut Value,
    metadata: &mut Value,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut pointer = String::from("/payload");
    walk(payload, &mut pointer, key, &at, &mut out);
    let mut pointer = String::from("/metadata");
    walk(metadata, &mut pointer, key, &at, &mut out);
    out
}

/// The bytes a leaf hashes (see the module docs).
pub fn leaf_data(chain_hash: &str, disclosed_hash: &str) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("chain_hash".into(), Value::String(chain_hash.to_owned()));
    map.insert(
        "disclosed_hash".into(),
        Value::String(disclosed_hash.to_owned()),
    );
    map.insert("schema".into(), Value::String(LEAF_SCHEMA.to_owned()));
    let mut out = Vec::with_capacity(200);
    write_canonical(&Value::Object(map), &mut out).expect("writing to a Vec cannot fail");
    out
}

/// An event's leaf hash.
pub fn event_leaf(chain_hash: &str, disclosed_hash: &str) -> Hash {
    leaf_hash(&leaf_data(chain_hash, disclosed_hash))
}

/// An event as it may leave the journal: its secret fields replaced by commitments.
#[derive(Clone, Debug, PartialEq)]
pub struct Disclosed {
    /// The redacted payload and metadata, when anything was redacted.
    pub redacted: Option<(Value, Value)>,
    /// Pointers of the redacted fields.
    pub pointers: Vec<String>,
    /// `D(e)`: the content hash of what is disclosed.
    pub disclosed_hash: String,
}

/// Redacts `content` and hashes what remains; `content_hash` is the event's (stored or
/// recomputed) content hash, reused when nothing is secret.
pub fn disclose(key: &RedactionKey, content: &EventContent<'_>, content_hash: &str) -> Disclosed {
    if !has_secret(content.payload) && !has_secret(content.metadata) {
        return Disclosed {
            redacted: None,
            pointers: Vec::new(),
            disclosed_hash: content_hash.to_owned(),
        };
    }
    let mut payload = content.payload.clone();
    let mut metadata = content.metadata.clone();
    let pointers = redact(
        key,
        EventRef {
            aggregate_type: content.aggregate_type,
            aggregate_id: content.aggregate_id,
            sequence: content.sequence,
        },
        &mut payload,
        &mut metadata,
    );
    if pointers.is_empty() {
        return Disclosed {
            redacted: None,
            pointers,
            disclosed_hash: content_hash.to_owned(),
        };
    }
    let disclosed_hash = EventContent {
        payload: &payload,
        metadata: &metadata,
        ..*content
    }
    .content_hash();
    Disclosed {
        redacted: Some((payload, metadata)),
        pointers,
        disclosed_hash,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn content<'a>(payload: &'a Value, metadata: &'a Value) -> EventContent<'a> {
        EventContent {
            aggregate_type: "payment",
            aggregate_id: "pay_1",
            sequence: 5,
            event_type: "payment.succeeded",
            event_version: "1.0",
            payload,
            metadata,
        }
    }

    #[test]
    fn secrets_become_salted_commitments_and_nothing_else_changes() {
        let key = RedactionKey::from_hex(&"07".repeat(32)).unwrap();
        let preimage = "ab".repeat(32);
        let payload = json!({"PaymentSucceeded": {"attempt": 1, "preimage_hex": preimage,
            "receipt": {"preimage_sha256": "x"}}, "list": [{"password": "p"}]});
        let metadata = json!({"actor": "user:1"});
        let c = content(&payload, &metadata);
        let disclosed = disclose(&key, &c, &c.content_hash());
        let (p, m) = disclosed.redacted.clone().unwrap();
        assert!(!p.to_string().contains(&preimage));
        assert_eq!(p["PaymentSucceeded"]["attempt"], 1);
        assert_eq!(p["PaymentSucceeded"]["receipt"]["preimage_sha256"], "x");
        assert_eq!(m, metadata);
        assert_eq!(
            disclosed.pointers,
            vec![
                "/payload/PaymentSucceeded/preimage_hex".to_owned(),
                "/payload/list/0/password".to_owned()
            ]
        );
        // Deterministic for a key, different for another key (salted), and the disclosed hash
        // is the content hash of the redacted form.
        assert_eq!(disclose(&key, &c, &c.content_hash()), disclosed);
        let other = RedactionKey::from_hex(&"08".repeat(32)).unwrap();
        assert_ne!(
            disclose(&other, &c, &c.content_hash()).redacted,
            disclosed.redacted
        );
        assert_eq!(content(&p, &m).content_hash(), disclosed.disclosed_hash);
        // Redacting a redacted event changes nothing.
        let again = disclose(&key, &content(&p, &m), &disclosed.disclosed_hash);
        assert!(again.redacted.is_none());
        assert_eq!(again.disclosed_hash, disclosed.disclosed_hash);
    }

    #[test]
    fn events_without_secrets_disclose_their_content_hash() {
        let key = RedactionKey::generate();
        let payload = json!({"RunStarted": {"preimage_sha256": "abc"}});
        let metadata = json!({});
        let c = content(&payload, &metadata);
        let disclosed = disclose(&key, &c, "sha256:given");
        assert_eq!(disclosed.disclosed_hash, "sha256:given");
        assert!(disclosed.redacted.is_none());
        assert!(!may_hold_secrets(&payload.to_string()));
        assert!(may_hold_secrets(r#"{"a":{"preimage_hex":"00"}}"#));
    }

    /// The scan as it was first written (a search per key), as the oracle of the one-pass scan.
    fn may_hold_secrets_per_key(json_text: &str) -> bool {
        SECRET_KEYS.iter().any(|key| {
            json_text.match_indices(key).any(|(i, _)| {
                json_text[..i].ends_with('"') && json_text[i + key.len()..].starts_with('"')
            })
        })
    }

    #[test]
    fn secret_keys_are_lowercase_words() {
        // What the one-pass scan's argument rests on (see `may_hold_secrets`).
        for key in SECRET_KEYS {
            assert!(
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{key}"
            );
        }
    }

    #[test]
    fn the_secret_scan_finds_exactly_the_quoted_keys() {
        let mut texts: Vec<String> = vec![
            String::new(),
            "\"".into(),
            "\"\"".into(),
            "\"secret".into(),
            "secret\"".into(),
            "\"secret\"".into(),
            "\"\"secret\"\"".into(),
            "\"secrets\"".into(),
            "\"xsecret\"".into(),
            r#"{"a":"b","password":1}"#.into(),
            r#"{"a":"my password"}"#.into(),
            r#"{"nested":{"api_key":"k"}}"#.into(),
            r#"{"é":"\"private_key\""}"#.into(),
            r#"{"delta":"Streaming a reasonably sized chunk of model output text."}"#.into(),
            r#"{"a":"preimage_hex"}"#.into(),
            r#"{"a":"preimage_he"}"#.into(),
        ];
        for key in SECRET_KEYS {
            texts.push(format!("\"{key}\""));
            texts.push(format!("\"{key}"));
            texts.push(format!("{key}\""));
            texts.push(format!("{{\"x\":\"\",\"{key}\":null}}"));
            texts.push(format!("\"{}\"", &key[..key.len() - 1]));
        }
        for text in &texts {
            assert_eq!(
                may_hold_secrets(text),
                may_hold_secrets_per_key(text),
                "{text}"
            );
        }
        assert!(may_hold_secrets(r#"{"a":"secret"}"#));
        assert!(!may_hold_secrets(r#"{"a":"secrets"}"#));
    }

    #[test]
    fn the_leaf_binds_both_hashes() {
        let a = event_leaf("sha256:c", "sha256:d");
        assert_ne!(a, event_leaf("sha256:c", "sha256:e"));
        assert_ne!(a, event_leaf("sha256:x", "sha256:d"));
        assert_eq!(
            String::from_utf8(leaf_data("c", "d")).unwrap(),
            r#"{"chain_hash":"c","disclosed_hash":"d","schema":"openagents.audit_leaf.v1"}"#
        );
    }
}

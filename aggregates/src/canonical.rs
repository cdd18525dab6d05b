//! Canonical JSON and content hashes: object keys sorted recursively (by Unicode code point, i.e.
//! byte order of their UTF-8), arrays in order, no whitespace, strings escaped as JSON does
//! (`"` `\` and control characters escaped, everything else, non-ASCII included, written as
//! UTF-8), numbers as serde_json writes them. The same bytes on every machine, so hashes of
//! payloads (frame fingerprints, Khala `payload_hash`, trajectory and replay hashes, the event hash
//! chain) are reproducible. `replay-fixtures/compat/` pins the form; the tests below read it.

use std::io;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `value` as canonical JSON.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Streams the canonical JSON of `value` into `out` (a buffer, a file, or a hasher).
///
/// # Errors
/// Whatever `out` returns.
pub fn write_canonical<W: io::Write + ?Sized>(value: &Value, out: &mut W) -> io::Result<()> {
    match value {
        Value::Object(map) => write_canonical_map(map, out),
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        Value::String(text) => write_json_string(text, out),
        scalar => serde_json::to_writer(&mut *out, scalar).map_err(io::Error::other),
    }
}

/// Streams the canonical JSON of an object (without wrapping it in a `Value`).
///
/// # Errors
/// Whatever `out` returns.
pub fn write_canonical_map<W: io::Write + ?Sized>(
    map: &serde_json::Map<String, Value>,
    out: &mut W,
) -> io::Result<()> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.write_all(b"{")?;
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write_json_string(key, out)?;
        out.write_all(b":")?;
        write_canonical(value, out)?;
    }
    out.write_all(b"}")
}

/// Writes `text` as a JSON string literal with serde_json's escaping.
///
/// # Errors
/// Whatever `out` returns.
pub fn write_json_string<W: io::Write + ?Sized>(text: &str, out: &mut W) -> io::Result<()> {
    serde_json::to_writer(&mut *out, text).map_err(io::Error::other)
}

/// `sha256:` + lowercase hex SHA-256 of `bytes`.
pub fn sha256_prefixed(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Lowercase hex SHA-256 of `bytes`, without a prefix.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:` + hex SHA-256 of the canonical JSON of `value`.
pub fn hash_canonical(value: &Value) -> String {
    format!("sha256:{}", hex::encode(canonical_digest(value)))
}

/// Raw SHA-256 of the canonical JSON of `value`, computed without materialising the text.
pub fn canonical_digest(value: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher).expect("hashing cannot fail");
    hasher.finalize().into()
}

/// A streaming `sha256:` hasher that is also an `io::Write`, for hashing text as it is produced.
#[derive(Clone, Default)]
pub struct PrefixedSha256(Sha256);

impl PrefixedSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// `sha256:<hex>` of everything written so far.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }

    /// Bare hex of everything written so far.
    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

impl io::Write for PrefixedSha256 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively_and_keeps_array_order() {
        let value = json!({"b": 2, "a": {"d": [3, {"z": 1, "y": 2}], "c": null}});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":2}"#
        );
    }

    #[test]
    fn escapes_strings_like_json() {
        let value = json!({"q": "\"x\"\n\\", "u": "é/\u{1}"});
        assert_eq!(
            canonical_json(&value),
            "{\"q\":\"\\\"x\\\"\\n\\\\\",\"u\":\"é/\\u0001\"}"
        );
    }

    #[test]
    fn numbers_render_as_serde_json_writes_them() {
        let value = json!({"f": 1.0, "h": 0.5, "i": -3, "u": u64::MAX});
        assert_eq!(
            canonical_json(&value),
            r#"{"f":1.0,"h":0.5,"i":-3,"u":18446744073709551615}"#
        );
    }

    #[test]
    fn hashes_the_canonical_form() {
        assert_eq!(
            hash_canonical(&json!({"b": 2, "a": 1})),
            "sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
        );
    }

    /// Every vector of the original sync lane's `khala_payload_hash_vectors.v1.json`.
    #[test]
    fn reproduces_every_khala_payload_hash_vector() {
        let file: Value = serde_json::from_str(include_str!(
            "../../replay-fixtures/compat/khala_payload_hash_vectors.v1.json"
        ))
        .unwrap();
        let vectors = file["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 5);
        for vector in vectors {
            let name = vector["name"].as_str().unwrap();
            let payload = &vector["payload"];
            assert_eq!(
                canonical_json(payload),
                vector["canonical_json"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                hash_canonical(payload),
                vector["sha256"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                sha256_prefixed(canonical_json(payload).as_bytes()),
                vector["sha256"].as_str().unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_streaming_hasher_matches_the_one_shot_hash() {
        let mut hasher = PrefixedSha256::new();
        hasher.update(b"ab");
        hasher.update(b"c");
        assert_eq!(hasher.clone().finish(), sha256_prefixed(b"abc"));
        assert_eq!(hasher.finish_hex(), sha256_hex(b"abc"));
    }
}

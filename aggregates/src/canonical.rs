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
        Value::Array(items) => write_array_with(items, out, |item, out| write_canonical(item, out)),
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
    write_canonical_members(map.iter(), out)
}

/// Streams the canonical JSON of the object with exactly these members (keys distinct), e.g. an
/// object without some of its members, without building it.
///
/// # Errors
/// Whatever `out` returns.
pub fn write_canonical_members<'a, W: io::Write + ?Sized>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut W,
) -> io::Result<()> {
    let mut entries: Vec<(&str, &Value)> = members.map(|(k, v)| (k.as_str(), v)).collect();
    write_sorted_object(&mut entries, out, |value, out| write_canonical(value, out))
}

/// `{…}` of `members` (keys distinct) sorted by key, each value written by `write`: the object
/// form of canonical JSON for values that are not a `Value` (a struct's fields, say).
///
/// # Errors
/// Whatever `out` or `write` returns.
pub fn write_sorted_object<W: io::Write + ?Sized, T>(
    members: &mut [(&str, T)],
    out: &mut W,
    mut write: impl FnMut(&T, &mut W) -> io::Result<()>,
) -> io::Result<()> {
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.write_all(b"{")?;
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write_json_string(key, out)?;
        out.write_all(b":")?;
        write(value, out)?;
    }
    out.write_all(b"}")
}

/// `[…]` of `items` in order, each written by `write`.
///
/// # Errors
/// Whatever `out` or `write` returns.
pub fn write_array_with<W: io::Write + ?Sized, T>(
    items: &[T],
    out: &mut W,
    mut write: impl FnMut(&T, &mut W) -> io::Result<()>,
) -> io::Result<()> {
    out.write_all(b"[")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write(item, out)?;
    }
    out.write_all(b"]")
}

/// Whether every object in `value` already has its members in canonical (byte) order, so that
/// serde_json's compact serialisation of it *is* its canonical JSON (the escaping and the scalars
/// are serde_json's in both).
pub fn in_canonical_order(value: &Value) -> bool {
    match value {
        Value::Object(map) => map_in_canonical_order(map),
        Value::Array(items) => items.iter().all(in_canonical_order),
        _ => true,
    }
}

/// [`in_canonical_order`] of an object.
pub fn map_in_canonical_order(map: &serde_json::Map<String, Value>) -> bool {
    let mut previous: Option<&str> = None;
    map.iter().all(|(key, value)| {
        let sorted = previous.is_none_or(|p| p < key.as_str());
        previous = Some(key);
        sorted && in_canonical_order(value)
    })
}

/// Writes `text` as a JSON string literal with serde_json's escaping.
///
/// # Errors
/// Whatever `out` returns.
pub fn write_json_string<W: io::Write + ?Sized>(text: &str, out: &mut W) -> io::Result<()> {
    serde_json::to_writer(&mut *out, text).map_err(io::Error::other)
}

/// `prefix` followed by the lowercase hex of `digest`: how every hash in this system is written.
/// A table lookup per byte into one allocation (`hex::encode` collects a `char` iterator into a
/// `String`, which showed in export profiles, where a few hashes are written per event).
pub fn prefixed_hex(prefix: &str, digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(prefix.len() + 2 * digest.len());
    out.extend_from_slice(prefix.as_bytes());
    for byte in digest {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    String::from_utf8(out).expect("a UTF-8 prefix and ASCII digits")
}

/// The prefix of a written SHA-256 hash.
pub const SHA256_PREFIX: &str = "sha256:";

/// `sha256:` + lowercase hex SHA-256 of `bytes`.
pub fn sha256_prefixed(bytes: &[u8]) -> String {
    prefixed_hex(SHA256_PREFIX, &Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of `bytes`, without a prefix.
pub fn sha256_hex(bytes: &[u8]) -> String {
    prefixed_hex("", &Sha256::digest(bytes))
}

/// `sha256:` + hex SHA-256 of the canonical JSON of `value`.
pub fn hash_canonical(value: &Value) -> String {
    prefixed_hex(SHA256_PREFIX, &canonical_digest(value))
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
        prefixed_hex(SHA256_PREFIX, &self.0.finalize())
    }

    /// Bare hex of everything written so far.
    pub fn finish_hex(self) -> String {
        prefixed_hex("", &self.0.finalize())
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
    fn values_in_canonical_order_serialise_to_their_canonical_json() {
        let cases = [
            (
                json!({"a": 1, "b": {"c": [1, {"d": "é\n", "e": null}]}}),
                true,
            ),
            (json!({"b": 1, "a": 2}), false),
            (json!({"a": [{"y": 1, "x": 2}]}), false),
            (json!({"a": {"b": 1, "B": 2}}), false),
            (json!({"B": 1, "a": {"b": 1.5e300, "c": -0.0}}), true),
            (json!([3, "x", {"k": true}]), true),
            (json!("scalar"), true),
            (json!({}), true),
        ];
        for (value, expected) in cases {
            assert_eq!(in_canonical_order(&value), expected, "{value}");
            let compact = serde_json::to_string(&value).unwrap();
            // The property the artifacts rely on, and that it can fail.
            assert_eq!(compact == canonical_json(&value), expected, "{value}");
        }
    }

    #[test]
    fn prefixed_hex_writes_what_hex_encode_writes() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(prefixed_hex("", &all_bytes), hex::encode(&all_bytes));
        let digest = Sha256::digest(b"abc");
        assert_eq!(
            sha256_prefixed(b"abc"),
            format!("sha256:{}", hex::encode(digest))
        );
        assert_eq!(prefixed_hex("p:", &[]), "p:");
    }

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

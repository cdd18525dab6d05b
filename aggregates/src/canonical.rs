//! Canonical JSON and content hashes: object keys sorted recursively, arrays in order, no
//! whitespace, strings escaped as JSON does. The same bytes on every machine, so hashes of
//! payloads (frame fingerprints, Khala `payload_hash`, replay hashes) are reproducible.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `value` as canonical JSON.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256:` + lowercase hex SHA-256 of `bytes`.
pub fn sha256_prefixed(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:` + hex SHA-256 of the canonical JSON of `value`.
pub fn hash_canonical(value: &Value) -> String {
    sha256_prefixed(canonical_json(value).as_bytes())
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
        let value = json!({"q": "\"x\"\n\\"});
        assert_eq!(canonical_json(&value), r#"{"q":"\"x\"\n\\"}"#);
    }

    #[test]
    fn hashes_the_canonical_form() {
        assert_eq!(
            hash_canonical(&json!({"b": 2, "a": 1})),
            "sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
        );
    }
}

//! An event's stored metadata split without building a `serde_json::Map`: the chain keys' values,
//! `recorded_at` and `idempotency_key` as slices of the stored text, and the text with the chain
//! members cut out, written as the event line's `metadata`. Only plain shapes take this path (see
//! [`split_metadata`]); anything else goes through the parsed map as before, so both give the
//! same bundle value.

use aggregates::chain;
use engine::artifacts::record::MetadataLookup;
use engine::journal::metadata_keys;

/// What an export reads from a stored metadata object.
#[derive(Debug, Default, PartialEq)]
pub(super) struct SplitMetadata<'a> {
    pub(super) content_hash: Option<&'a str>,
    pub(super) chain_hash: Option<&'a str>,
    /// The split text.
    text: &'a str,
    /// Where the members a run's artifacts read are in the text.
    lookup: LookupSpans,
}

impl<'a> SplitMetadata<'a> {
    /// The stored `recorded_at`.
    pub(super) fn recorded_at(&self) -> Option<&'a str> {
        self.lookup.get(self.text, metadata_keys::RECORDED_AT)
    }

    /// Where `recorded_at` and `idempotency_key` are in the split text: what the artifact worker
    /// needs of it, handed over with the row instead of splitting the text a second time.
    pub(super) fn lookup_spans(&self) -> LookupSpans {
        self.lookup.clone()
    }
}

/// Where the members a run's artifacts read ([`MetadataLookup`]) are in an event's stored
/// metadata text, found by [`split_metadata`]; [`LookupSpans::lookup`] reads them from that text.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct LookupSpans {
    recorded_at: Option<Span>,
    idempotency_key: Option<Span>,
}

impl LookupSpans {
    /// The lookup over `text`, which must be the text these spans were split from.
    pub(super) fn lookup<'a>(&'a self, text: &'a str) -> SpansIn<'a> {
        SpansIn { text, spans: self }
    }

    /// The member `key` of `text` (the text these spans were split from), if it is one a run's
    /// artifacts read and it was there.
    fn get<'t>(&self, text: &'t str, key: &str) -> Option<&'t str> {
        let span = match key {
            metadata_keys::RECORDED_AT => self.recorded_at.as_ref(),
            metadata_keys::IDEMPOTENCY_KEY => self.idempotency_key.as_ref(),
            _ => None,
        }?;
        text.get(span.clone())
    }
}

/// [`LookupSpans`] over the text they were found in.
pub(super) struct SpansIn<'a> {
    text: &'a str,
    spans: &'a LookupSpans,
}

impl MetadataLookup for SpansIn<'_> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.spans.get(self.text, key)
    }
}

impl MetadataLookup for SplitMetadata<'_> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.lookup.get(self.text, key)
    }
}

/// Appends `text` without its chain members to `out` and returns what it found; `None` (and
/// `out` as it was) when the text is not a plain shape: not valid JSON, not an object, spanning
/// lines, a key with an escape, a key of interest twice, or a key of interest whose value is not a
/// string without escapes. The caller then parses the text instead.
pub(super) fn split_metadata<'a>(text: &'a str, out: &mut Vec<u8>) -> Option<SplitMetadata<'a>> {
    if text.bytes().any(|b| b == b'\n' || b == b'\r')
        || serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
    {
        return None;
    }
    let start = out.len();
    let found = split_valid(text.as_bytes(), out);
    if found.is_none() {
        out.truncate(start);
    }
    found.map(|f| SplitMetadata {
        content_hash: f.content_hash.map(|r| &text[r]),
        chain_hash: f.chain_hash.map(|r| &text[r]),
        text,
        lookup: LookupSpans {
            recorded_at: f.recorded_at,
            idempotency_key: f.idempotency_key,
        },
    })
}

type Span = std::ops::Range<usize>;

#[derive(Default)]
struct Found {
    content_hash: Option<Span>,
    chain_hash: Option<Span>,
    recorded_at: Option<Span>,
    idempotency_key: Option<Span>,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// The index after the string starting at `b[i] == '"'`, and whether it holds an escape.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += b.get(j..)?.iter().position(|c| *c == b'"' || *c == b'\\')?;
        if b[j] == b'"' {
            return Some((j + 1, escaped));
        }
        escaped = true;
        j += 2;
    }
}

/// The index after the value starting at `b[i]` (the text is valid JSON).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t') {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Walks the members of the (valid JSON) object `b`.
fn split_valid(b: &[u8], out: &mut Vec<u8>) -> Option<Found> {
    let mut found = Found::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    out.push(b'{');
    let mut first = true;
    loop {
        i = skip_ws(b, i);
        match *b.get(i)? {
            b'}' => break,
            b',' => {
                i = skip_ws(b, i + 1);
            }
            _ => {}
        }
        let key_start = i;
        let (key_end, key_escaped) = string_end(b, key_start)?;
        if key_escaped {
            return None;
        }
        let key = &b[key_start + 1..key_end - 1];
        let mut j = skip_ws(b, key_end);
        if b.get(j) != Some(&b':') {
            return None;
        }
        j = skip_ws(b, j + 1);
        let value_start = j;
        let value_end = value_end(b, value_start)?;
        let slot = match key {
            k if k == chain::CONTENT_HASH_KEY.as_bytes() => Some((&mut found.content_hash, true)),
            k if k == chain::CHAIN_HASH_KEY.as_bytes() => Some((&mut found.chain_hash, true)),
            k if k == metadata_keys::RECORDED_AT.as_bytes() => {
                Some((&mut found.recorded_at, false))
            }
            k if k == metadata_keys::IDEMPOTENCY_KEY.as_bytes() => {
                Some((&mut found.idempotency_key, false))
            }
            _ => None,
        };
        let cut = match slot {
            Some((slot, cut)) => {
                if slot.is_some() || b[value_start] != b'"' {
                    return None;
                }
                let (end, escaped) = string_end(b, value_start)?;
                if escaped || end != value_end {
                    return None;
                }
                *slot = Some(value_start + 1..value_end - 1);
                cut
            }
            None => false,
        };
        if !cut {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&b[key_start..value_end]);
        }
        i = value_end;
    }
    out.push(b'}');
    Some(found)
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;

    /// What the parsed path gives: the metadata without string chain keys, and the strings.
    fn parsed(text: &str) -> (Value, Option<String>, Option<String>, Option<String>) {
        let mut map: Map<String, Value> = serde_json::from_str(text).unwrap();
        let mut take = |key: &str| match map.get(key) {
            Some(Value::String(s)) => {
                let s = s.clone();
                map.shift_remove(key);
                Some(s)
            }
            _ => None,
        };
        let content = take(chain::CONTENT_HASH_KEY);
        let link = take(chain::CHAIN_HASH_KEY);
        let at = map
            .get("recorded_at")
            .and_then(Value::as_str)
            .map(str::to_owned);
        (Value::Object(map), content, link, at)
    }

    #[test]
    fn plain_metadata_splits_to_what_parsing_gives() {
        for text in [
            r#"{"actor":"user:bench","chain_hash":"sha256:aa","content_hash":"sha256:bb","recorded_at":"2026-01-01T00:00:00Z"}"#,
            r#"{ "content_hash" : "sha256:bb" , "x": {"chain_hash": "inner", "a": [1, "}", {"b": null}]}, "chain_hash":"sha256:aa", "n": -1.5e3, "t": true }"#,
            r#"{"recorded_at":"2026-01-01T00:00:00.5Z","idempotency_key":"k-1","s":"a\"b\\c"}"#,
            r#"{}"#,
            r#"{"chain_hash":"sha256:aa"}"#,
            r#"{"a":"é ✓","chain_hash":"sha256:aa","b":[]}"#,
        ] {
            let mut out = b"prefix".to_vec();
            let split = split_metadata(text, &mut out).expect(text);
            let written: Value = serde_json::from_slice(&out[6..]).expect("valid JSON");
            let (value, content, link, at) = parsed(text);
            assert_eq!(written, value, "{text}");
            assert_eq!(split.content_hash.map(str::to_owned), content, "{text}");
            assert_eq!(split.chain_hash.map(str::to_owned), link, "{text}");
            assert_eq!(split.recorded_at().map(str::to_owned), at, "{text}");
            // Member order is kept (the parsed map keeps it too).
            assert_eq!(
                serde_json::to_string(&written).unwrap(),
                serde_json::to_string(&value).unwrap()
            );
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_parser() {
        for text in [
            "[1,2]",
            "\"x\"",
            "{\"a\":1,\n\"b\":2}",
            r#"{"chain_hash":1}"#,
            r#"{"chain_hash":"sha256:a\u0061"}"#,
            r#"{"chain\u005fhash":"sha256:aa"}"#,
            r#"{"chain_hash":"a","chain_hash":"b"}"#,
            r#"{"recorded_at":null}"#,
            r#"{"a":1"#,
            r#"{"a":1}}"#,
            "",
        ] {
            let mut out = b"keep".to_vec();
            assert_eq!(split_metadata(text, &mut out), None, "{text}");
            assert_eq!(out, b"keep");
        }
    }

    #[test]
    fn the_lookup_answers_what_the_run_record_reads() {
        let mut out = Vec::new();
        let split = split_metadata(
            r#"{"recorded_at":"2026-01-01T00:00:00Z","idempotency_key":"k"}"#,
            &mut out,
        )
        .unwrap();
        assert_eq!(split.get_str("recorded_at"), Some("2026-01-01T00:00:00Z"));
        assert_eq!(split.get_str("idempotency_key"), Some("k"));
        assert_eq!(split.get_str("actor"), None);
    }

    #[test]
    fn handed_over_spans_answer_what_the_split_answers() {
        for text in [
            r#"{"recorded_at":"2026-01-01T00:00:00Z","idempotency_key":"k","chain_hash":"sha256:aa"}"#,
            r#"{ "actor" : "é ✓", "idempotency_key" : "key-2" }"#,
            r#"{"a":1}"#,
        ] {
            let mut out = Vec::new();
            let split = split_metadata(text, &mut out).expect(text);
            let spans = split.lookup_spans();
            let lookup = spans.lookup(text);
            for key in ["recorded_at", "idempotency_key", "actor", "chain_hash"] {
                assert_eq!(lookup.get_str(key), split.get_str(key), "{key} of {text}");
            }
        }
    }
}

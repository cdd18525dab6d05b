//! The first divergence between an expected and an actual JSON document, as a readable report:
//! where (a JSONPath-like path), what was expected and what was produced. Documents are compared
//! as they serialise: object keys in a different order are a divergence too.

use std::fmt;

use serde_json::Value;

/// Where two documents first differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// `$.events[3].payload.RunStarted.source`.
    pub path: String,
    /// `None` when the expected document has nothing there.
    pub expected: Option<Value>,
    /// `None` when the produced document has nothing there.
    pub actual: Option<Value>,
}

fn short(value: &Option<Value>) -> String {
    match value {
        None => "(nothing)".into(),
        Some(v) => {
            let text = serde_json::to_string_pretty(v).unwrap_or_default();
            if text.len() > 2_000 {
                let head: String = text.chars().take(2_000).collect();
                format!("{head}… ({} bytes)", text.len())
            } else {
                text
            }
        }
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "first divergence at {}", self.path)?;
        writeln!(
            f,
            "  expected: {}",
            short(&self.expected).replace('\n', "\n            ")
        )?;
        write!(
            f,
            "  actual:   {}",
            short(&self.actual).replace('\n', "\n            ")
        )
    }
}

/// Where the walk is: a chain of steps on the stack, rendered only when a divergence is reported
/// (most documents compared are equal, and a path string per member was most of the walk's cost).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => "$".to_owned(),
            Path::Key(parent, key) => {
                let parent = parent.render();
                if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !key.is_empty() {
                    format!("{parent}.{key}")
                } else {
                    format!("{parent}[{}]", Value::String((*key).to_owned()))
                }
            }
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// The first place where `actual` differs from `expected` (depth first, in document order), or
/// `None` when they are equal.
pub fn first_divergence(expected: &Value, actual: &Value) -> Option<Divergence> {
    walk(&Path::Root, expected, actual)
}

fn walk(path: &Path<'_>, expected: &Value, actual: &Value) -> Option<Divergence> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let p = Path::Key(path, key);
                match a.get(key) {
                    Some(av) => {
                        if let Some(d) = walk(&p, ev, av) {
                            return Some(d);
                        }
                    }
                    None => {
                        return Some(Divergence {
                            path: p.render(),
                            expected: Some(ev.clone()),
                            actual: None,
                        })
                    }
                }
            }
            if let Some((k, av)) = a.iter().find(|(k, _)| !e.contains_key(*k)) {
                return Some(Divergence {
                    path: Path::Key(path, k).render(),
                    expected: None,
                    actual: Some(av.clone()),
                });
            }
            // Same keys and values; the bytes still differ when the keys come in another order.
            if !e.keys().eq(a.keys()) {
                let keys = |m: &serde_json::Map<String, Value>| {
                    Value::Array(m.keys().map(|k| Value::String(k.clone())).collect())
                };
                return Some(Divergence {
                    path: format!("{} (key order)", path.render()),
                    expected: Some(keys(e)),
                    actual: Some(keys(a)),
                });
            }
            None
        }
        (Value::Array(e), Value::Array(a)) => {
            for i in 0..e.len().max(a.len()) {
                let p = Path::Index(path, i);
                match (e.get(i), a.get(i)) {
                    (Some(ev), Some(av)) => {
                        if let Some(d) = walk(&p, ev, av) {
                            return Some(d);
                        }
                    }
                    (ev, av) => {
                        return Some(Divergence {
                            path: p.render(),
                            expected: ev.cloned(),
                            actual: av.cloned(),
                        })
                    }
                }
            }
            None
        }
        (e, a) if e == a => None,
        (e, a) => Some(Divergence {
            path: path.render(),
            expected: Some(e.clone()),
            actual: Some(a.clone()),
        }),
    }
}

/// The first differing line of two texts (1-based), with both lines.
pub fn first_line_divergence(
    expected: &str,
    actual: &str,
) -> Option<(usize, Option<String>, Option<String>)> {
    let mut e = expected.split_inclusive('\n');
    let mut a = actual.split_inclusive('\n');
    let mut line = 0;
    loop {
        line += 1;
        match (e.next(), a.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => return Some((line, x.map(str::to_owned), y.map(str::to_owned))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_documents_have_no_divergence() {
        let v = json!({"a": [1, {"b": null}]});
        assert_eq!(first_divergence(&v, &v.clone()), None);
    }

    #[test]
    fn names_the_deepest_first_difference() {
        let e = json!({"events": [{"n": 1}, {"payload": {"x": 1, "y": 2}}]});
        let a = json!({"events": [{"n": 1}, {"payload": {"x": 1, "y": 3}}]});
        let d = first_divergence(&e, &a).unwrap();
        assert_eq!(d.path, "$.events[1].payload.y");
        assert_eq!((d.expected, d.actual), (Some(json!(2)), Some(json!(3))));
    }

    #[test]
    fn missing_and_extra_entries_are_divergences() {
        let d = first_divergence(&json!([1, 2]), &json!([1])).unwrap();
        assert_eq!((d.path.as_str(), d.actual), ("$[1]", None));
        let d = first_divergence(&json!({"a": 1}), &json!({"a": 1, "b c": 2})).unwrap();
        assert_eq!(d.path, "$[\"b c\"]");
        assert!(d.to_string().contains("expected: (nothing)"));
    }

    #[test]
    fn keys_in_another_order_are_a_divergence() {
        let e: Value = serde_json::from_str(r#"{"x": {"a": 1, "b": 2}}"#).unwrap();
        let a: Value = serde_json::from_str(r#"{"x": {"b": 2, "a": 1}}"#).unwrap();
        let d = first_divergence(&e, &a).unwrap();
        assert_eq!(d.path, "$.x (key order)");
        assert_eq!(
            (d.expected, d.actual),
            (Some(json!(["a", "b"])), Some(json!(["b", "a"])))
        );
    }

    #[test]
    fn line_divergence_is_one_based() {
        assert_eq!(first_line_divergence("a\nb\n", "a\nb\n"), None);
        let (line, e, a) = first_line_divergence("a\nb\n", "a\nc\n").unwrap();
        assert_eq!(
            (line, e.as_deref(), a.as_deref()),
            (2, Some("b\n"), Some("c\n"))
        );
    }
}

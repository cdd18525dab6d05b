//! Whole numbers in JSON bodies. JSON (and the JSON Schema of the API's OpenAPI document) does not
//! tell `1841` from `1841.0`: both are the integer 1841, so integer fields accept either and
//! refuse a fraction, a negative number or one out of range, like the integer they are.

use serde::{Deserialize, Deserializer};

/// 2^64 as a float: the first whole float that does not fit a `u64`.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// `#[serde(default, deserialize_with = "aggregates::number::opt_whole_u64")]` for an
/// `Option<u64>` field: `null` or absent is `None`; `1841` and `1841.0` are `Some(1841)`.
///
/// # Errors
/// A number with a fraction, a negative number, one of 2^64 or more, or anything but a number.
pub fn opt_whole_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    whole_u64(&number).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid value: {number}, expected a whole number between 0 and {}",
            u64::MAX
        ))
    })
}

/// The number as a `u64`, when it is a whole number in range.
pub fn whole_u64(number: &serde_json::Number) -> Option<u64> {
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    let f = number.as_f64()?;
    // In range and whole: the cast is exact.
    (f.fract() == 0.0 && (0.0..TWO_POW_64).contains(&f)).then_some(f as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "opt_whole_u64")]
        n: Option<u64>,
    }

    fn parse(json: &str) -> Result<Option<u64>, serde_json::Error> {
        serde_json::from_str::<Body>(json).map(|b| b.n)
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        assert_eq!(parse(r#"{"n": 1841}"#).unwrap(), Some(1841));
        assert_eq!(parse(r#"{"n": 1841.0}"#).unwrap(), Some(1841));
        assert_eq!(parse(r#"{"n": 1.841e3}"#).unwrap(), Some(1841));
        assert_eq!(parse(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(parse("{}").unwrap(), None);
        assert_eq!(
            parse(r#"{"n": 18446744073709551615}"#).unwrap(),
            Some(u64::MAX)
        );
        for bad in [
            r#"{"n": 1841.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": -1.0}"#,
            r#"{"n": 1.8446744073709552e19}"#,
            r#"{"n": "5"}"#,
            r#"{"n": true}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

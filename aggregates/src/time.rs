//! `Timestamp`: the only notion of time the domain has. It arrives with each command (stamped by the
//! engine's injectable clock), so folding the same events always gives the same state.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with microsecond precision (the precision PostgreSQL keeps), rendered as RFC 3339
/// with a `Z` suffix and the fewest sub-second digits that represent it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The Unix epoch, used as "no time yet" in default aggregate states.
    pub const EPOCH: Timestamp = Timestamp(DateTime::<Utc>::UNIX_EPOCH);

    /// Wraps an instant, dropping anything finer than a microsecond.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        let micros = at.timestamp_micros();
        Self(
            DateTime::<Utc>::from_timestamp_micros(micros)
                .expect("a microsecond count taken from a DateTime converts back"),
        )
    }

    /// Builds a timestamp from microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        DateTime::<Utc>::from_timestamp_micros(micros).map(Self)
    }

    /// Builds a timestamp from whole seconds since the Unix epoch.
    pub fn from_unix_seconds(seconds: i64) -> Option<Self> {
        Utc.timestamp_opt(seconds, 0).single().map(Self)
    }

    pub fn unix_micros(&self) -> i64 {
        self.0.timestamp_micros()
    }

    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// This instant plus `millis` milliseconds (saturating at the representable range).
    pub fn plus_millis(&self, millis: u64) -> Self {
        let millis = i64::try_from(millis).unwrap_or(i64::MAX / 1000);
        let micros = self
            .unix_micros()
            .saturating_add(millis.saturating_mul(1000));
        Self::from_unix_micros(micros).unwrap_or(*self)
    }

    /// Milliseconds from `earlier` to `self`, or 0 if `earlier` is later.
    pub fn millis_since(&self, earlier: Timestamp) -> u64 {
        u64::try_from((self.unix_micros() - earlier.unix_micros()) / 1000).unwrap_or(0)
    }

    /// RFC 3339, `Z` suffix, minimal exact sub-second digits (0, 3, 6 or 9).
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// RFC 3339 with a `+00:00` offset, the original contract's rendering (trajectory hashes,
    /// REPLAY.jsonl, receipts): `2026-02-01T00:00:01+00:00` for whole seconds; otherwise the
    /// fewest of 3 or 6 sub-second digits that represent the instant exactly, e.g.
    /// `2026-02-01T00:00:01.500+00:00`, `2026-02-01T00:00:01.000123+00:00` (chrono's
    /// `to_rfc3339`, which the original runtime used). See docs/adr/0031.
    pub fn to_contract_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, false)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Error for a string that is not an RFC 3339 timestamp.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an RFC 3339 timestamp: {0:?}")]
pub struct TimestampParseError(String);

impl FromStr for Timestamp {
    type Err = TimestampParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s)
            .map(|at| Self::from_datetime(at.with_timezone(&Utc)))
            .map_err(|_| TimestampParseError(s.to_owned()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Self::EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_whole_seconds_without_fraction_and_micros_exactly() {
        let t: Timestamp = "2026-02-01T00:00:01Z".parse().unwrap();
        assert_eq!(t.to_rfc3339(), "2026-02-01T00:00:01Z");
        let t = Timestamp::from_unix_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn truncates_below_a_microsecond_and_round_trips_through_serde() {
        let at = DateTime::parse_from_rfc3339("2026-02-01T00:00:01.123456789+00:00").unwrap();
        let t = Timestamp::from_datetime(at.with_timezone(&Utc));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-02-01T00:00:01.123456Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn contract_rendering_uses_an_offset_and_keeps_sub_seconds_exact() {
        let t: Timestamp = "2026-02-01T00:00:01Z".parse().unwrap();
        assert_eq!(t.to_contract_rfc3339(), "2026-02-01T00:00:01+00:00");
        assert_eq!(
            t.plus_millis(500).to_contract_rfc3339(),
            "2026-02-01T00:00:01.500+00:00"
        );
        let micros = Timestamp::from_unix_micros(t.unix_micros() + 123).unwrap();
        assert_eq!(
            micros.to_contract_rfc3339(),
            "2026-02-01T00:00:01.000123+00:00"
        );
    }

    #[test]
    fn rejects_text_that_is_not_a_timestamp() {
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        assert_eq!(t.plus_millis(1500).to_rfc3339(), "2026-02-01T00:00:01.500Z");
        assert_eq!(t.millis_since(t.plus_millis(10)), 0);
        assert_eq!(t.plus_millis(10).millis_since(t), 10);
    }
}

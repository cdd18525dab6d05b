//! Spend policy: which hosts may be paid and how much, per request, per rolling window, per run and
//! per owner. Pure checks that produce a [`Denial`] the API reports verbatim; the window, run and
//! owner caps are enforced by the [`SpendLedger`](super::ledger::SpendLedger) under its concurrency
//! control, the host and per-request caps before anything is recorded.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::types::Msat;

/// Why a payment is not allowed. `as_str()` values are the API's `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialCode {
    HostNotAllowed,
    RequestCapExceeded,
    QuotedAmountExceedsCap,
    WindowCapExceeded,
    RunCapExceeded,
    OwnerCapExceeded,
}

impl DenialCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            DenialCode::HostNotAllowed => "host_not_allowed",
            DenialCode::RequestCapExceeded => "request_cap_exceeded",
            DenialCode::QuotedAmountExceedsCap => "quoted_amount_exceeds_cap",
            DenialCode::WindowCapExceeded => "window_cap_exceeded",
            DenialCode::RunCapExceeded => "run_cap_exceeded",
            DenialCode::OwnerCapExceeded => "owner_cap_exceeded",
        }
    }
}

/// A policy denial with the original executor's `details` fields (absent ones stay `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub code: DenialCode,
    pub message: String,
    pub host: Option<String>,
    pub max_allowed_msats: Option<u64>,
    pub quoted_amount_msats: Option<u64>,
    pub window_spend_msats: Option<u64>,
    pub window_cap_msats: Option<u64>,
}

impl Denial {
    fn new(code: DenialCode, message: String, host: &str) -> Self {
        Self {
            code,
            message,
            host: Some(host.to_owned()),
            max_allowed_msats: None,
            quoted_amount_msats: None,
            window_spend_msats: None,
            window_cap_msats: None,
        }
    }
}

/// The caps the SpendLedger enforces while reserving (carried in each reservation command, so
/// a configuration change applies from the next reservation on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendCaps {
    /// Rolling window length.
    pub window_ms: u64,
    /// Most that may be spent (settled + reserved) inside one window, across the wallet.
    pub window_cap: Msat,
    /// Most one run may spend over its lifetime, if capped.
    pub run_cap: Option<Msat>,
    /// Most one owner may spend inside one window, if capped.
    pub owner_window_cap: Option<Msat>,
}

/// The whole policy of an executor. Defaults are the original executor's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendPolicy {
    /// Lowercase hosts that may be paid; empty means any host.
    pub allowed_hosts: BTreeSet<String>,
    /// Largest `maxAmountMsats` (and quote) one request may carry.
    pub request_cap: Msat,
    pub caps: SpendCaps,
}

impl Default for SpendPolicy {
    fn default() -> Self {
        Self {
            allowed_hosts: ["sats4ai.com", "l402.openagents.com"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            request_cap: Msat(200_000),
            caps: SpendCaps {
                window_ms: 300_000,
                window_cap: Msat(1_000_000),
                run_cap: None,
                owner_window_cap: None,
            },
        }
    }
}

/// `host` trimmed and lowercased, as hosts are compared and recorded.
pub fn normalize_host(host: &str) -> String {
    host.trim().to_ascii_lowercase()
}

impl SpendPolicy {
    /// The checks made before the invoice is even decoded.
    ///
    /// # Errors
    /// `host_not_allowed` or `request_cap_exceeded`.
    pub fn check_request(&self, host: &str, max_amount: Msat) -> Result<(), Denial> {
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.contains(host) {
            return Err(Denial::new(
                DenialCode::HostNotAllowed,
                format!("host {host} is not in the wallet executor allowlist"),
                host,
            ));
        }
        if max_amount > self.request_cap {
            let mut denial = Denial::new(
                DenialCode::RequestCapExceeded,
                format!(
                    "request max amount {} msats exceeds service cap {} msats",
                    max_amount.0, self.request_cap.0
                ),
                host,
            );
            // No invoice has been quoted yet: the request's own maximum is in the message only.
            denial.max_allowed_msats = Some(self.request_cap.0);
            return Err(denial);
        }
        Ok(())
    }

    /// The check of the invoice's amount against the request's and the service's cap.
    ///
    /// # Errors
    /// `quoted_amount_exceeds_cap`.
    pub fn check_quote(&self, host: &str, max_amount: Msat, quoted: Msat) -> Result<(), Denial> {
        if quoted > max_amount || quoted > self.request_cap {
            let mut denial = Denial::new(
                DenialCode::QuotedAmountExceedsCap,
                format!("quoted amount {} msats exceeds cap", quoted.0),
                host,
            );
            denial.max_allowed_msats = Some(max_amount.min(self.request_cap).0);
            denial.quoted_amount_msats = Some(quoted.0);
            return Err(denial);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_outside_a_non_empty_allowlist_are_denied() {
        let policy = SpendPolicy::default();
        assert!(policy.check_request("sats4ai.com", Msat(1)).is_ok());
        let denial = policy.check_request("example.com", Msat(1)).unwrap_err();
        assert_eq!(denial.code, DenialCode::HostNotAllowed);
        assert_eq!(denial.host.as_deref(), Some("example.com"));
        let open = SpendPolicy {
            allowed_hosts: BTreeSet::new(),
            ..SpendPolicy::default()
        };
        assert!(open.check_request("example.com", Msat(1)).is_ok());
    }

    #[test]
    fn the_request_cap_bounds_max_amount_inclusively() {
        let policy = SpendPolicy::default();
        assert!(policy.check_request("sats4ai.com", Msat(200_000)).is_ok());
        let denial = policy
            .check_request("sats4ai.com", Msat(200_001))
            .unwrap_err();
        assert_eq!(denial.code, DenialCode::RequestCapExceeded);
        assert_eq!(denial.max_allowed_msats, Some(200_000));
        assert_eq!(denial.quoted_amount_msats, None);
        assert!(denial.message.contains("200001"));
    }

    #[test]
    fn a_quote_above_the_requests_max_is_denied_with_the_smaller_limit() {
        let policy = SpendPolicy::default();
        assert!(policy.check_quote("h", Msat(100), Msat(100)).is_ok());
        let denial = policy.check_quote("h", Msat(100), Msat(101)).unwrap_err();
        assert_eq!(denial.code, DenialCode::QuotedAmountExceedsCap);
        assert_eq!(denial.max_allowed_msats, Some(100));
        assert_eq!(denial.quoted_amount_msats, Some(101));
    }

    #[test]
    fn hosts_are_trimmed_and_lowercased() {
        assert_eq!(normalize_host("  Sats4AI.com "), "sats4ai.com");
    }
}

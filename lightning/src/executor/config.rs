//! The wallet executor's configuration: wallet id, spend policy, fee limit, timeouts and the bearer
//! token. Defaults are the original executor's. `Debug` never prints the token.

use std::fmt;
use std::time::Duration;

use aggregates::payment::{Msat, SpendPolicy, WalletId};

/// The most LND may spend on routing fees for one payment: the larger of a fixed amount and a
/// proportion of the amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeeLimit {
    pub fixed_msats: u64,
    pub ppm: u64,
}

impl Default for FeeLimit {
    fn default() -> Self {
        Self {
            fixed_msats: 10_000,
            ppm: 10_000,
        }
    }
}

impl FeeLimit {
    pub fn for_amount(&self, amount: Msat) -> Msat {
        Msat(
            self.fixed_msats
                .max(amount.get().saturating_mul(self.ppm) / 1_000_000),
        )
    }
}

#[derive(Clone)]
pub struct ExecutorConfig {
    pub wallet_id: WalletId,
    pub policy: SpendPolicy,
    pub fee_limit: FeeLimit,
    /// How long LND may search for routes (SendPaymentV2 `timeout_seconds`).
    pub send_timeout_secs: u32,
    /// How long a `/pay-bolt11` request waits for an outcome before answering `504 payment_pending`
    /// (the payment carries on and a retry returns its outcome).
    pub response_wait: Duration,
    /// How long after an attempt's last send TrackPaymentV2's `NotFound` is taken as "never
    /// reached the node" (before that, LND may still be registering a send whose answer was lost).
    pub not_found_grace: Duration,
    /// The longest wait for a read from the node (GetInfo, DecodePayReq) before it counts as
    /// unreachable.
    pub node_call_timeout: Duration,
    /// The wallet lease's time to live (renewed every third of it; a peer takes over a dead
    /// holder's wallet after at most this plus a third).
    pub lease_ttl: Duration,
    /// The bearer token callers must present; `None` disables auth (`authMode: disabled`).
    pub auth_token: Option<String>,
    pub auth_token_version: u32,
}

impl fmt::Debug for ExecutorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorConfig")
            .field("wallet_id", &self.wallet_id)
            .field("policy", &self.policy)
            .field("fee_limit", &self.fee_limit)
            .field("send_timeout_secs", &self.send_timeout_secs)
            .field("response_wait", &self.response_wait)
            .field("not_found_grace", &self.not_found_grace)
            .field("node_call_timeout", &self.node_call_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_token_version", &self.auth_token_version)
            .finish()
    }
}

impl ExecutorConfig {
    /// The original executor's defaults for `wallet_id`, auth disabled.
    pub fn new(wallet_id: WalletId) -> Self {
        Self {
            wallet_id,
            policy: SpendPolicy::default(),
            fee_limit: FeeLimit::default(),
            send_timeout_secs: 60,
            response_wait: Duration::from_secs(45),
            not_found_grace: Duration::from_secs(10),
            node_call_timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(15),
            auth_token: None,
            auth_token_version: 1,
        }
    }

    pub fn auth_mode(&self) -> &'static str {
        if self.auth_token.is_some() {
            "bearer_static"
        } else {
            "disabled"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_limit_is_the_larger_of_fixed_and_proportional() {
        let limit = FeeLimit {
            fixed_msats: 1_000,
            ppm: 10_000,
        };
        assert_eq!(limit.for_amount(Msat(50_000)), Msat(1_000));
        assert_eq!(limit.for_amount(Msat(1_000_000)), Msat(10_000));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let mut config = ExecutorConfig::new(WalletId::parse("w").unwrap());
        config.auth_token = Some("super-secret-token".into());
        let text = format!("{config:?}");
        assert!(!text.contains("super-secret-token"));
        assert_eq!(config.auth_mode(), "bearer_static");
    }
}

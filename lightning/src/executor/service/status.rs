//! `/status` and the node-health notes behind it: what the executor last saw of its node, its
//! payments and its errors, with the wallet's caps and ledger.

use aggregates::payment::services::NodeError;
use aggregates::payment::{Msat, Network, PaymentHash, SpendLedger};
use aggregates::Timestamp;
use engine::clock::now_ms;
use serde::Serialize;

use super::{PayError, PaymentExecutor};

/// The executor's live status for `/status`.
#[derive(Clone, Debug, Default)]
pub(super) struct StatusState {
    lifecycle: &'static str,
    identity_pubkey: Option<String>,
    alias: Option<String>,
    network: Option<Network>,
    balance_sats: Option<u64>,
    channel_local_msats: Option<u64>,
    last_payment_id: Option<String>,
    last_payment_at_ms: Option<i64>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    /// Why the node is not usable, while it is not: `unreachable`, `auth_refused`, `refused`.
    node_cause: Option<&'static str>,
    updated_at_ms: i64,
}

impl StatusState {
    /// A new executor's status: no node seen yet.
    pub(super) fn disconnected() -> Self {
        Self {
            lifecycle: "disconnected",
            ..Self::default()
        }
    }
}

/// What kind of node trouble `error` is, for `/status` `nodeCause`.
fn node_cause(error: &NodeError) -> &'static str {
    match error {
        NodeError::AuthRefused(_) => "auth_refused",
        NodeError::Unavailable(_) | NodeError::OutcomeUnknown(_) | NodeError::StreamBroken(_) => {
            "unreachable"
        }
        _ => "refused",
    }
}

/// `/status`'s `status` object (the original's fields, plus the runtime's caps and counts).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WalletStatus {
    pub wallet_id: String,
    pub mode: &'static str,
    pub auth_mode: &'static str,
    pub auth_enforced: bool,
    pub auth_token_version: u32,
    pub lifecycle: &'static str,
    pub network: Option<&'static str>,
    pub identity_pubkey: Option<String>,
    pub node_alias: Option<String>,
    pub balance_sats: Option<u64>,
    pub channel_balance_msats: Option<u64>,
    /// Why the node is not usable (`unreachable`, `auth_refused`, `refused`), `null` when it is.
    pub node_cause: Option<&'static str>,
    pub ready: bool,
    /// Whether this process holds the wallet's lease (one executor per wallet).
    pub lease_held: bool,
    pub allowed_host_count: usize,
    pub request_cap_msats: u64,
    pub window_cap_msats: u64,
    pub window_ms: u64,
    pub run_cap_msats: Option<u64>,
    pub owner_window_cap_msats: Option<u64>,
    pub window_spend_msats: u64,
    pub open_reservations: usize,
    pub recent_payments_count: usize,
    pub last_payment_id: Option<String>,
    pub last_payment_at_ms: Option<i64>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub updated_at_ms: i64,
}

impl PaymentExecutor {
    pub(super) fn note_error(&self, code: &str, message: &str) {
        let mut status = self.status.lock().expect("status lock");
        status.last_error_code = Some(code.to_owned());
        status.last_error_message = Some(message.to_owned());
        status.updated_at_ms = now_ms();
    }

    /// Records a settled payment for `/status` (last payment; the last error is cleared).
    pub(super) fn note_paid(&self, hash: &PaymentHash, paid_at_ms: i64) {
        let mut status = self.status.lock().expect("status lock");
        status.last_payment_id = Some(hash.to_string());
        status.last_payment_at_ms = Some(paid_at_ms);
        status.last_error_code = None;
        status.last_error_message = None;
        status.updated_at_ms = now_ms();
    }

    /// Records node trouble for `/status` (`lifecycle: error`, `nodeCause`, last error) and turns it
    /// into the caller's `502 node_unavailable`.
    pub(super) fn node_trouble(&self, error: &NodeError) -> PayError {
        let cause = node_cause(error);
        {
            let mut status = self.status.lock().expect("status lock");
            status.lifecycle = "error";
            status.node_cause = Some(cause);
        }
        self.note_error("node_unavailable", &error.to_string());
        PayError::NodeUnavailable(error.to_string())
    }

    /// The node answered: it is reachable and takes our credentials.
    pub(super) fn node_answered(&self) {
        let mut status = self.status.lock().expect("status lock");
        status.lifecycle = "connected";
        status.node_cause = None;
    }

    /// The wallet's status for `/status`: node identity and balance (best effort, bounded), caps,
    /// recent payments, last error.
    pub async fn status(&self) -> WalletStatus {
        let node = tokio::time::timeout(self.config.node_call_timeout, async {
            let info = self.node.info().await?;
            let balance = self.node.balance().await?;
            Ok::<_, NodeError>((info, balance))
        })
        .await;
        {
            let mut status = self.status.lock().expect("status lock");
            match node {
                Ok(Ok((info, balance))) => {
                    status.lifecycle = "connected";
                    status.node_cause = None;
                    status.identity_pubkey = Some(info.identity_pubkey);
                    status.alias = Some(info.alias);
                    status.network = info.network;
                    status.balance_sats = Some(
                        balance
                            .onchain_confirmed_sats
                            .saturating_add(balance.channel_local_msats / 1000),
                    );
                    status.channel_local_msats = Some(balance.channel_local_msats);
                    *self.node_network.lock().expect("lock") = info.network;
                }
                Ok(Err(error)) => {
                    status.lifecycle = "error";
                    status.node_cause = Some(node_cause(&error));
                    status.last_error_code = Some("node_unavailable".into());
                    status.last_error_message = Some(error.to_string());
                }
                Err(_) => {
                    status.lifecycle = "error";
                    status.node_cause = Some("unreachable");
                    status.last_error_code = Some("node_unavailable".into());
                    status.last_error_message = Some(format!(
                        "node unreachable: no answer within {:?}",
                        self.config.node_call_timeout
                    ));
                }
            }
            status.updated_at_ms = now_ms();
        }
        let ledger = self
            .engine
            .load::<SpendLedger>(self.config.wallet_id.as_str())
            .await
            .map(|(l, _)| l)
            .unwrap_or_default();
        let now: Timestamp = self.engine.now();
        let caps = &self.config.policy.caps;
        let status = self.status.lock().expect("status lock").clone();
        WalletStatus {
            wallet_id: self.config.wallet_id.to_string(),
            mode: "lnd",
            auth_mode: self.config.auth_mode(),
            auth_enforced: self.config.auth_token.is_some(),
            auth_token_version: self.config.auth_token_version,
            lifecycle: status.lifecycle,
            network: status.network.map(|n| n.as_str()),
            identity_pubkey: status.identity_pubkey,
            node_alias: status.alias,
            balance_sats: status.balance_sats,
            channel_balance_msats: status.channel_local_msats,
            node_cause: status.node_cause,
            lease_held: self.holds_lease(),
            ready: status.lifecycle == "connected" && self.is_ready(),
            allowed_host_count: self.config.policy.allowed_hosts.len(),
            request_cap_msats: self.config.policy.request_cap.get(),
            window_cap_msats: caps.window_cap.get(),
            window_ms: caps.window_ms,
            run_cap_msats: caps.run_cap.map(Msat::get),
            owner_window_cap_msats: caps.owner_window_cap.map(Msat::get),
            window_spend_msats: ledger.window_spend(now, caps.window_ms, None),
            open_reservations: ledger.reservations.len(),
            recent_payments_count: ledger.recent_count(now, caps.window_ms),
            // This process's last payment, else the ledger's (so it survives restarts).
            last_payment_id: status
                .last_payment_id
                .or_else(|| ledger.recent.last().map(|s| s.payment_hash.to_string())),
            last_payment_at_ms: status.last_payment_at_ms.or_else(|| {
                ledger
                    .recent
                    .last()
                    .map(|s| s.committed_at.unix_micros() / 1000)
            }),
            last_error_code: status.last_error_code,
            last_error_message: status.last_error_message,
            updated_at_ms: status.updated_at_ms,
        }
    }
}

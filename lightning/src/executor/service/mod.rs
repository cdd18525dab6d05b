//! [`PaymentExecutor`]: pays Bolt11 invoices exactly once, under spend caps, through a
//! [`LightningNode`].
//!
//! One payment, step by step (each step is a command in the journal, so a crash anywhere leaves a
//! state the next start can finish):
//! 1. the request id is looked up (a retry finds its original payment; another invoice under the
//!    same id is a conflict);
//! 2. host and per-request caps, then LND's `DecodePayReq` (network, expiry, amount) and the quote cap;
//! 3. `RequestPayment` on the Payment aggregate (one per payment hash): opens an attempt, or attaches
//!    the request to the open or settled one — so concurrent requests for one invoice pay it once;
//! 4. `ReserveSpend` on the wallet's SpendLedger: the window, run and owner caps are checked and the
//!    amount reserved under the ledger stream's optimistic concurrency;
//! 5. `SendPaymentV2`; on success `CommitSpend` + `RecordSuccess`, on failure `RecordFailure` +
//!    `ReleaseSpend`, and when the outcome is unknown `MarkReconcileRequired` and `TrackPaymentV2`
//!    until LND gives one.
//!
//! Steps 3–5 run in a driver task per payment hash, detached from the HTTP request (a client that
//! disconnects cannot cancel a payment half way). On start, every reservation the ledger still holds is
//! reconciled with `TrackPaymentV2` before the executor reports ready, and a request that finds an
//! open attempt nobody in this process drives reconciles it first, so nothing pays an invoice whose
//! last attempt's outcome is unknown.
//!
//! # Layout
//! - this file: the request and answer types, [`PaymentExecutor`] with its lease, readiness and
//!   journal helpers;
//! - `admission`: checks a request and binds it to an attempt, then waits for the outcome;
//! - `driver`: the per-hash driver task (reserve, SendPaymentV2, TrackPaymentV2);
//! - `settlement`: success, failure and the ledger catching up with a closed payment;
//! - `reconcile`: the start-up reconcile of payments left open by a previous run;
//! - `status`: `/status` and the node-health notes behind it.

mod admission;
mod driver;
mod reconcile;
mod settlement;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aggregates::ids::{Owner, RunId};
use aggregates::payment::receipt::WalletReceipt;
use aggregates::payment::services::LightningNode;
use aggregates::payment::{
    Denial, Network, Payment, PaymentCommand, PaymentEvent, SpendLedger, SpendLedgerCommand,
    SpendLedgerError, SpendLedgerEvent,
};
use engine::{CommandContext, CommandError, Engine};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::ExecutorConfig;
use super::lease::WalletLease;
use driver::DriverState;
use status::StatusState;

pub use admission::request_fingerprint;
pub use status::WalletStatus;

/// `executor_not_ready`'s reason while another process holds the wallet.
const LEASE_ELSEWHERE: &str =
    "another executor process holds this wallet's lease (one executor per wallet)";

/// A request to pay, as the HTTP layer hands it over.
#[derive(Clone, Debug)]
pub struct PayInput {
    pub request_id: String,
    pub invoice: String,
    pub max_amount_msats: u64,
    pub host: String,
    pub run_id: Option<RunId>,
    pub owner: Option<Owner>,
}

/// A paid invoice, as `/pay-bolt11` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaySuccess {
    pub request_id: String,
    pub wallet_id: String,
    pub payment: PaymentResult,
    pub quoted_amount_msats: u64,
    pub window_spend_msats_after_payment: u64,
    pub receipt: WalletReceipt,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResult {
    pub payment_id: String,
    pub amount_msats: u64,
    pub preimage_hex: String,
    pub paid_at_ms: i64,
}

/// Why a payment request did not end in a payment. Each maps to one HTTP status and `code`.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("{0}")]
    InvalidRequest(String),
    /// The invoice itself is unusable (`invoice_invalid`, `invoice_expired`,
    /// `invoice_network_mismatch`, `invoice_amount_missing`).
    #[error("{message}")]
    Invoice { code: &'static str, message: String },
    #[error("{}", .0.message)]
    Denied(Denial),
    #[error("{0}")]
    Conflict(String),
    /// No outcome yet; the payment carries on and a retry with the same request id returns it.
    #[error("{0}")]
    Pending(String),
    #[error("{message}")]
    Failed { reason: String, message: String },
    #[error("{0}")]
    NodeUnavailable(String),
    #[error("the executor is not ready: {0}")]
    NotReady(&'static str),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl PayError {
    pub fn code(&self) -> &'static str {
        match self {
            PayError::InvalidRequest(_) => "invalid_request",
            PayError::Invoice { code, .. } => code,
            PayError::Denied(denial) => denial.code.as_str(),
            PayError::Conflict(_) => "idempotency_conflict",
            PayError::Pending(_) => "payment_pending",
            PayError::Failed { .. } => "payment_failed",
            PayError::NodeUnavailable(_) => "node_unavailable",
            PayError::NotReady(_) => "executor_not_ready",
            PayError::Internal(_) => "internal_error",
        }
    }
}

fn internal<E: std::error::Error + Send + Sync + 'static>(error: CommandError<E>) -> PayError {
    match error {
        CommandError::Unavailable(e) => {
            PayError::Internal(anyhow::Error::new(e).context("journal unavailable"))
        }
        CommandError::Internal(e) => PayError::Internal(e),
        other => PayError::Internal(anyhow::anyhow!("{other}")),
    }
}

/// The payment executor. One per wallet; share it behind an `Arc`.
pub struct PaymentExecutor {
    engine: Arc<Engine>,
    node: Arc<dyn LightningNode>,
    config: ExecutorConfig,
    /// Driver tasks by payment hash. A driver inserts its receiver before it starts and removes it
    /// (then sends `true`) when it ends; waiters clone the receiver to learn when to re-read.
    drivers: Mutex<HashMap<String, watch::Receiver<DriverState>>>,
    /// Tracks driver tasks so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled on shutdown: drivers stop following LND (payments in LND carry on and are
    /// reconciled on the next start).
    shutdown: CancellationToken,
    /// `true` once every payment open at start-up has an outcome or is tracked.
    reconciled: watch::Sender<bool>,
    /// Whether the executor takes new payments.
    ready: watch::Sender<bool>,
    /// This process's claim on the wallet (one executor per wallet).
    lease: WalletLease,
    /// Until when this process may act for the wallet (`None`: it does not hold the lease).
    lease_valid_until: Mutex<Option<Instant>>,
    status: Mutex<StatusState>,
    node_network: Mutex<Option<Network>>,
}

impl PaymentExecutor {
    pub fn new(
        engine: Arc<Engine>,
        node: Arc<dyn LightningNode>,
        config: ExecutorConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (ready, _) = watch::channel(false);
        let (reconciled, _) = watch::channel(false);
        let lease = WalletLease::new(
            engine.journal().clone(),
            config.wallet_id.as_str(),
            config.lease_ttl,
        );
        Arc::new(Self {
            lease,
            lease_valid_until: Mutex::new(None),
            engine,
            node,
            config,
            drivers: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown,
            reconciled,
            ready,
            status: Mutex::new(StatusState::disconnected()),
            node_network: Mutex::new(None),
        })
    }

    /// Creates the executor and starts its startup reconcile in the background (the executor
    /// answers `503 executor_not_ready` to new payments until it is done). This is the constructor
    /// the composition root uses.
    pub fn start(
        engine: Arc<Engine>,
        node: Arc<dyn LightningNode>,
        config: ExecutorConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let executor = Self::new(engine, node, config, shutdown);
        let this = executor.clone();
        executor.tasks.spawn(async move { this.run_lease().await });
        executor
    }

    /// Takes and keeps the wallet's lease (every third of its TTL). Each time this process comes to
    /// hold it, the start-up reconcile runs again; while it does not, the executor is not ready and
    /// acts on no payment.
    async fn run_lease(self: Arc<Self>) {
        let mut held = false;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            // The next try is due a third of the TTL after this one started, however long it took.
            let next_try = Instant::now() + self.lease.ttl() / 3;
            match self.lease.try_acquire().await {
                Ok(Some(until)) => {
                    *self.lease_valid_until.lock().expect("lease lock") = Some(until)
                }
                Ok(None) => {
                    if held {
                        tracing::warn!(holder = %self.lease.holder(), "the wallet lease was taken by another executor");
                    }
                    *self.lease_valid_until.lock().expect("lease lock") = None;
                }
                Err(error) => {
                    tracing::warn!(error.message = %error, "cannot renew the wallet lease");
                }
            }
            let now_held = self.holds_lease();
            if now_held && !held {
                tracing::info!(holder = %self.lease.holder(), wallet = %self.config.wallet_id, "holding the wallet lease");
                self.reconciled.send_replace(false);
                let this = self.clone();
                self.tasks
                    .spawn(async move { this.run_startup_reconcile().await });
            }
            if !now_held && held {
                self.reconciled.send_replace(false);
            }
            held = now_held;
            self.update_ready();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_try) => {}
            }
        }
    }

    /// Why the executor is not ready, for `503 executor_not_ready`.
    pub fn not_ready_reason(&self) -> &'static str {
        if self.holds_lease() {
            "it is reconciling payments left open by a previous run"
        } else {
            LEASE_ELSEWHERE
        }
    }

    /// Whether this process may act for the wallet now.
    pub fn holds_lease(&self) -> bool {
        self.lease_valid_until
            .lock()
            .expect("lease lock")
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn scope(&self) -> String {
        format!("lightning:{}", self.config.wallet_id)
    }

    fn context(&self, request_id: Option<&str>) -> CommandContext {
        CommandContext {
            actor: "system:lightning-executor".to_owned(),
            request_id: request_id.map(str::to_owned),
            ..CommandContext::default()
        }
    }

    /// Ready when the start-up reconcile is done (and, see [`Self::update_ready`], the wallet's
    /// lease is held).
    fn update_ready(&self) {
        let ready = *self.reconciled.borrow() && self.holds_lease();
        self.ready.send_replace(ready);
    }

    /// Ready to take payments: the wallet's lease is held and the start-up reconcile is done.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() && self.holds_lease()
    }

    /// Waits for every driver task to stop (after the shutdown token was cancelled), then gives
    /// the wallet's lease up so another executor may take over at once.
    pub async fn wait_stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        if self.holds_lease() {
            if let Err(error) = self.lease.release().await {
                tracing::warn!(error.message = %error, "cannot release the wallet lease; it expires by itself");
            }
        }
    }

    async fn load_payment(&self, payment_hash: &str) -> anyhow::Result<Payment> {
        let (payment, _) = self
            .engine
            .load::<Payment>(payment_hash)
            .await
            .map_err(|e| anyhow::anyhow!("load payment: {e}"))?;
        Ok(payment)
    }

    async fn payment_command(
        &self,
        payment_hash: &str,
        command: PaymentCommand,
    ) -> anyhow::Result<Vec<PaymentEvent>> {
        anyhow::ensure!(
            self.holds_lease(),
            "this executor does not hold the wallet lease"
        );
        let outcome = self
            .engine
            .execute::<Payment>(payment_hash, command, &self.context(None))
            .await
            .map_err(|e| anyhow::anyhow!("payment command on {payment_hash}: {e}"))?;
        Ok(outcome.events.into_iter().map(|e| e.payload).collect())
    }

    async fn ledger_command(
        &self,
        command: SpendLedgerCommand,
    ) -> Result<Vec<SpendLedgerEvent>, CommandError<SpendLedgerError>> {
        if !self.holds_lease() {
            return Err(CommandError::Internal(anyhow::anyhow!(
                "this executor does not hold the wallet lease"
            )));
        }
        let outcome = self
            .engine
            .execute::<SpendLedger>(self.config.wallet_id.as_str(), command, &self.context(None))
            .await?;
        Ok(outcome.events.into_iter().map(|e| e.payload).collect())
    }
}

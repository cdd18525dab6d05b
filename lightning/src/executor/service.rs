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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregates::ids::{Owner, RunId};
use aggregates::payment::receipt::{build_receipt, ReceiptInput, WalletReceipt};
use aggregates::payment::services::{LightningNode, NodeError, PaymentProgress, SendRequest};
use aggregates::payment::types::sha256_hex;
use aggregates::payment::{
    AttemptStatus, Denial, Msat, Network, Payment, PaymentCommand, PaymentError, PaymentEvent,
    PaymentHash, PaymentRequest, SpendLedger, SpendLedgerCommand, SpendLedgerError,
    SpendLedgerEvent,
};
use aggregates::Timestamp;
use engine::backoff::Backoff;
use engine::clock::now_ms;
use engine::{CommandContext, CommandError, Engine, IdempotencyRequest, Journal, OutcomeKind};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::ExecutorConfig;
use super::lease::WalletLease;

/// `executor_not_ready`'s reason while another process holds the wallet.
const LEASE_ELSEWHERE: &str =
    "another executor process holds this wallet's lease (one executor per wallet)";

/// The longest pause between TrackPaymentV2 tries while the node is unreachable.
const TRACK_RETRY_MAX: Duration = Duration::from_secs(2);

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

/// The executor's live status for `/status`.
#[derive(Clone, Debug, Default)]
struct StatusState {
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

/// Where a payment's driver task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DriverState {
    /// Sending, or trying to reach LND.
    Running,
    /// LND reported the payment in flight (SendPaymentV2 or TrackPaymentV2 stream): it is followed
    /// and its reservation is held.
    Tracked,
    /// The driver ended (the payment has an outcome, or the driver stopped on shutdown / error).
    Done,
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

/// The original executor's request fingerprint: wallet | host | invoice hash | max amount.
pub fn request_fingerprint(
    wallet: &str,
    host: &str,
    invoice_hash: &str,
    max_amount: u64,
) -> String {
    sha256_hex(&format!("{wallet}|{host}|{invoice_hash}|{max_amount}"))
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
            status: Mutex::new(StatusState {
                lifecycle: "disconnected",
                ..StatusState::default()
            }),
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

    fn note_error(&self, code: &str, message: &str) {
        let mut status = self.status.lock().expect("status lock");
        status.last_error_code = Some(code.to_owned());
        status.last_error_message = Some(message.to_owned());
        status.updated_at_ms = now_ms();
    }

    /// Reconciles every payment the ledger still holds a reservation for, then reports ready:
    /// each one must have a final answer or be tracked (LND reported it in flight) with its
    /// reservation held. Until then `/healthz`, `/status` say not ready and new payments get `503
    /// executor_not_ready`. Runs until done or shutdown; call once after construction.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads and spawns drivers.
    pub async fn run_startup_reconcile(self: &Arc<Self>) {
        let mut delay = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut pending: Option<std::collections::BTreeSet<String>> = None;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let open = match &pending {
                Some(open) => Ok(open.clone()),
                None => self
                    .engine
                    .load::<SpendLedger>(self.config.wallet_id.as_str())
                    .await
                    .map(|(ledger, _)| {
                        ledger
                            .reservations
                            .values()
                            .map(|r| r.payment_hash.to_string())
                            .collect::<std::collections::BTreeSet<String>>()
                    })
                    .map_err(|e| e.to_string()),
            };
            let open = match open {
                Ok(open) => open,
                Err(error) => {
                    tracing::warn!(error.message = %error, "cannot read the spend ledger; retrying");
                    self.pause(&mut delay).await;
                    continue;
                }
            };
            let mut unsettled = std::collections::BTreeSet::new();
            for hash in &open {
                tracing::info!(payment_hash = %hash, "reconciling a payment left open by a previous run");
                let mut state = self.ensure_driver(hash);
                let reached = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    reached = state.wait_for(|s| *s != DriverState::Running) => {
                        reached.map(|s| *s).unwrap_or(DriverState::Done)
                    }
                };
                if reached == DriverState::Done {
                    // Ended: an outcome, or a driver that stopped without one (journal trouble).
                    match self.load_payment(hash).await {
                        Ok(payment) if payment.open_attempt().is_none() => {}
                        _ => {
                            unsettled.insert(hash.clone());
                        }
                    }
                }
            }
            if unsettled.is_empty() {
                self.reconciled.send_replace(true);
                self.update_ready();
                return;
            }
            pending = Some(unsettled);
            self.pause(&mut delay).await;
        }
    }

    /// Sleeps the backoff's next delay (or until shutdown).
    async fn pause(&self, delay: &mut Backoff) {
        delay.sleep(&self.shutdown).await;
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

    /// Records node trouble for `/status` (`lifecycle: error`, `nodeCause`, last error) and turns it
    /// into the caller's `502 node_unavailable`.
    fn node_trouble(&self, error: &NodeError) -> PayError {
        let cause = node_cause(error);
        {
            let mut status = self.status.lock().expect("status lock");
            status.lifecycle = "error";
            status.node_cause = Some(cause);
        }
        self.note_error("node_unavailable", &error.to_string());
        PayError::NodeUnavailable(error.to_string())
    }

    /// GetInfo, bounded by the node call timeout.
    async fn node_info(&self) -> Result<aggregates::payment::services::NodeInfo, NodeError> {
        match tokio::time::timeout(self.config.node_call_timeout, self.node.info()).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Unavailable(format!(
                "the node did not answer within {:?}",
                self.config.node_call_timeout
            ))),
        }
    }

    async fn node_network(&self) -> Result<Option<Network>, PayError> {
        if let Some(network) = *self.node_network.lock().expect("lock") {
            return Ok(Some(network));
        }
        let info = self.node_info().await.map_err(|e| self.node_trouble(&e))?;
        *self.node_network.lock().expect("lock") = info.network;
        Ok(info.network)
    }

    /// LND's DecodePayReq. An answer that is not clearly about the invoice is checked against
    /// GetInfo: if the node does not answer that either, it is node trouble, not a bad invoice.
    async fn decode(&self, invoice: &str) -> Result<aggregates::payment::DecodedInvoice, PayError> {
        let decoded =
            match tokio::time::timeout(self.config.node_call_timeout, self.node.decode(invoice))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(NodeError::Unavailable(format!(
                    "the node did not answer within {:?}",
                    self.config.node_call_timeout
                ))),
            };
        match decoded {
            Ok(decoded) => {
                self.node_answered();
                Ok(decoded)
            }
            Err(NodeError::InvalidInvoice(message)) => match self.node_info().await {
                Ok(_) => {
                    self.node_answered();
                    Err(PayError::Invoice {
                        code: "invoice_invalid",
                        message: format!("the node cannot decode the invoice: {message}"),
                    })
                }
                Err(trouble) => Err(self.node_trouble(&trouble)),
            },
            Err(other) => Err(self.node_trouble(&other)),
        }
    }

    /// The node answered: it is reachable and takes our credentials.
    fn node_answered(&self) {
        let mut status = self.status.lock().expect("status lock");
        status.lifecycle = "connected";
        status.node_cause = None;
    }

    /// Pays (or returns the original outcome of) one request.
    ///
    /// # Errors
    /// [`PayError`]; every variant is an answer for the caller, none leaves a half-made payment.
    ///
    /// # Cancel safety
    /// Cancel-safe: the payment runs in its own task; dropping this future only stops waiting.
    #[tracing::instrument(skip_all, fields(request_id = %input.request_id, host = %input.host))]
    pub async fn pay(self: &Arc<Self>, input: PayInput) -> Result<PaySuccess, PayError> {
        let deadline = Instant::now() + self.config.response_wait;
        let host = aggregates::payment::policy::normalize_host(&input.host);
        let invoice = input.invoice.trim().to_owned();
        if invoice.is_empty() || invoice.len() > 4096 {
            return Err(PayError::InvalidRequest(
                "payment.invoice must be 1 to 4096 characters".into(),
            ));
        }
        if host.is_empty() {
            return Err(PayError::InvalidRequest(
                "payment.host must not be empty".into(),
            ));
        }
        if input.max_amount_msats == 0 {
            return Err(PayError::InvalidRequest(
                "payment.maxAmountMsats must be greater than 0".into(),
            ));
        }
        if input.request_id.is_empty() || input.request_id.len() > 256 {
            return Err(PayError::InvalidRequest(
                "requestId must be 1 to 256 characters".into(),
            ));
        }
        let invoice_hash = sha256_hex(&invoice);
        let fingerprint = request_fingerprint(
            self.config.wallet_id.as_str(),
            &host,
            &invoice_hash,
            input.max_amount_msats,
        );

        // 1. A retry finds its payment without touching LND.
        if let Some(record) = self
            .engine
            .journal()
            .find_idempotency(&self.scope(), &input.request_id)
            .await
            .map_err(|e| PayError::Internal(anyhow::Error::new(e)))?
        {
            if record.request_hash != fingerprint {
                return Err(PayError::Conflict(format!(
                    "request_id {} reused with different payment parameters",
                    input.request_id
                )));
            }
            return self
                .await_outcome(&record.aggregate_id, &input.request_id, deadline)
                .await;
        }
        self.check_ready()?;

        // 2. Policy and the node's reading of the invoice.
        self.config
            .policy
            .check_request(&host, Msat(input.max_amount_msats))
            .map_err(PayError::Denied)?;
        let node_network = self.node_network().await?;
        let invoice_network = Network::of_invoice(&invoice);
        if let (Some(node), Some(inv)) = (node_network, invoice_network) {
            if node != inv {
                return Err(PayError::Invoice {
                    code: "invoice_network_mismatch",
                    message: format!("invoice is for {inv} but the wallet's node runs on {node}"),
                });
            }
        }
        let decoded = self.decode(&invoice).await?;
        if decoded.amount_msats == Msat::ZERO {
            return Err(PayError::Invoice {
                code: "invoice_amount_missing",
                message: "amountless invoices are not supported".into(),
            });
        }
        if now_ms() >= decoded.expires_at_ms() {
            return Err(PayError::Invoice {
                code: "invoice_expired",
                message: "the invoice has expired".into(),
            });
        }
        self.config
            .policy
            .check_quote(&host, Msat(input.max_amount_msats), decoded.amount_msats)
            .map_err(PayError::Denied)?;

        // 3. Bind the request to an attempt.
        let payment_hash = decoded.payment_hash.clone();
        let fee_limit = self.config.fee_limit.for_amount(decoded.amount_msats);
        let request = PaymentRequest {
            request_id: input.request_id.clone(),
            fingerprint: fingerprint.clone(),
            wallet_id: self.config.wallet_id.clone(),
            host,
            invoice,
            invoice_hash,
            decoded,
            network: invoice_network.or(node_network).unwrap_or(Network::Mainnet),
            max_amount_msats: Msat(input.max_amount_msats),
            fee_limit_msats: fee_limit,
            run_id: input.run_id,
            owner: input.owner,
        };
        let mut context = self.context(Some(&input.request_id));
        context.idempotency = Some(IdempotencyRequest {
            scope: self.scope(),
            key: input.request_id.clone(),
            request_hash: fingerprint,
        });
        let outcome = self
            .engine
            .execute::<Payment>(
                payment_hash.as_str(),
                PaymentCommand::RequestPayment(Box::new(request)),
                &context,
            )
            .await
            .map_err(|e| match e {
                CommandError::IdempotencyKeyReused
                | CommandError::Rejected(PaymentError::RequestConflict { .. }) => {
                    PayError::Conflict(format!(
                        "request_id {} reused with different payment parameters",
                        input.request_id
                    ))
                }
                CommandError::Rejected(PaymentError::InvoiceExpired) => PayError::Invoice {
                    code: "invoice_expired",
                    message: "the invoice has expired".into(),
                },
                CommandError::Rejected(other) => PayError::InvalidRequest(other.to_string()),
                other => internal(other),
            })?;
        if outcome.kind == OutcomeKind::Appended {
            if let Some(PaymentEvent::PaymentRequested { .. }) =
                outcome.events.first().map(|e| &e.payload)
            {
                self.ensure_driver(payment_hash.as_str());
            }
        }
        self.await_outcome(&outcome.aggregate_id, &input.request_id, deadline)
            .await
    }

    fn check_ready(&self) -> Result<(), PayError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(PayError::NotReady(self.not_ready_reason()))
        }
    }

    /// Waits until the attempt `request_id` is bound to has an outcome, or the deadline passes.
    async fn await_outcome(
        self: &Arc<Self>,
        payment_hash: &str,
        request_id: &str,
        deadline: Instant,
    ) -> Result<PaySuccess, PayError> {
        let mut rounds: u32 = 0;
        loop {
            let (payment, _) = self
                .engine
                .load::<Payment>(payment_hash)
                .await
                .map_err(internal)?;
            let binding = payment.requests.get(request_id).ok_or_else(|| {
                PayError::Internal(anyhow::anyhow!(
                    "request {request_id} is not bound to payment {payment_hash}"
                ))
            })?;
            let attempt = payment.attempt(binding.attempt).ok_or_else(|| {
                PayError::Internal(anyhow::anyhow!("attempt {} missing", binding.attempt))
            })?;
            match attempt.status {
                AttemptStatus::Succeeded => {
                    let settlement = payment.settlement.as_ref().ok_or_else(|| {
                        PayError::Internal(anyhow::anyhow!("succeeded without a settlement"))
                    })?;
                    let facts = payment.invoice.as_ref().expect("a bound payment has facts");
                    return Ok(PaySuccess {
                        request_id: request_id.to_owned(),
                        wallet_id: facts.wallet_id.to_string(),
                        payment: PaymentResult {
                            payment_id: facts.decoded.payment_hash.to_string(),
                            amount_msats: settlement.settled_amount_msats,
                            preimage_hex: settlement.preimage_hex.clone(),
                            paid_at_ms: settlement.paid_at_ms,
                        },
                        quoted_amount_msats: facts.decoded.amount_msats.get(),
                        window_spend_msats_after_payment: settlement.window_spend_after_msats,
                        receipt: settlement.receipt.clone(),
                    });
                }
                AttemptStatus::Failed => {
                    return Err(PayError::Failed {
                        reason: attempt.failure_reason.clone().unwrap_or_default(),
                        message: attempt
                            .failure_message
                            .clone()
                            .unwrap_or_else(|| "payment failed".into()),
                    })
                }
                AttemptStatus::Denied => {
                    return Err(PayError::Denied(attempt.denial.clone().ok_or_else(
                        || PayError::Internal(anyhow::anyhow!("denied without a denial")),
                    )?))
                }
                AttemptStatus::Requested
                | AttemptStatus::Reserved
                | AttemptStatus::ReconcileRequired => {
                    if !self.holds_lease() {
                        // Another executor holds the wallet: only it may act on this payment.
                        return Err(PayError::NotReady(LEASE_ELSEWHERE));
                    }
                    if self.shutdown.is_cancelled() {
                        return Err(PayError::Pending(
                            "the executor is shutting down; the payment resumes on restart".into(),
                        ));
                    }
                    if rounds > 0 {
                        // A driver ended without closing the attempt (e.g. the journal was
                        // briefly unavailable): back off before starting another.
                        let pause = Duration::from_millis(100 * u64::from(rounds.min(10)));
                        if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                            .await
                            .is_err()
                        {
                            return Err(PayError::Pending(
                                "payment did not complete before timeout".into(),
                            ));
                        }
                    }
                    let mut driver = self.ensure_driver(payment_hash);
                    if tokio::time::timeout_at(
                        deadline,
                        driver.wait_for(|s| *s == DriverState::Done),
                    )
                    .await
                    .is_err()
                    {
                        return Err(PayError::Pending(
                            "payment did not complete before timeout".into(),
                        ));
                    }
                    rounds += 1;
                }
            }
        }
    }

    /// Returns the running driver's completion watch for `payment_hash`, starting one if none runs.
    fn ensure_driver(self: &Arc<Self>, payment_hash: &str) -> watch::Receiver<DriverState> {
        if !self.holds_lease() {
            return watch::channel(DriverState::Done).1;
        }
        let mut drivers = self.drivers.lock().expect("drivers lock");
        if let Some(existing) = drivers.get(payment_hash) {
            return existing.clone();
        }
        let (state_tx, state_rx) = watch::channel(DriverState::Running);
        drivers.insert(payment_hash.to_owned(), state_rx.clone());
        drop(drivers);
        let this = self.clone();
        let hash = payment_hash.to_owned();
        self.tasks.spawn(async move {
            let result = this.drive(&hash, &state_tx).await;
            if let Err(error) = result {
                tracing::error!(payment_hash = %hash, error.message = %error, error.cause_chain = ?error, "payment driver failed");
                this.note_error("driver_error", &error.to_string());
            }
            this.drivers.lock().expect("drivers lock").remove(&hash);
            state_tx.send_replace(DriverState::Done);
        });
        state_rx
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

    /// Reserves and sends a requested attempt and follows it while the send stream lasts.
    /// Returns `true` when the attempt still needs tracking (outcome unknown).
    async fn send_attempt(
        &self,
        payment: &Payment,
        attempt_number: u32,
        state: &watch::Sender<DriverState>,
    ) -> anyhow::Result<bool> {
        let facts = payment
            .invoice
            .clone()
            .ok_or_else(|| anyhow::anyhow!("payment vanished"))?;
        let payment_hash = facts.decoded.payment_hash.to_string();
        let payment_hash = payment_hash.as_str();
        let attempt = payment
            .attempt(attempt_number)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("attempt {attempt_number} missing"))?;
        let hash = facts.decoded.payment_hash.clone();
        // The fee limit is reserved with the amount: whatever LND spends on routing is spend.
        let reserve = Msat(
            facts
                .decoded
                .amount_msats
                .get()
                .saturating_add(attempt.fee_limit_msats.get()),
        );
        let reserved = self
            .ledger_command(SpendLedgerCommand::ReserveSpend {
                payment_hash: hash.clone(),
                attempt: attempt_number,
                amount_msats: reserve,
                host: attempt.host.clone(),
                run_id: attempt.run_id.clone(),
                owner: attempt.owner.clone(),
                caps: self.config.policy.caps.clone(),
            })
            .await;
        let window_before = match reserved {
            Ok(events) => events
                .iter()
                .find_map(|e| match e {
                    SpendLedgerEvent::SpendReserved {
                        window_spend_before_msats,
                        ..
                    } => Some(*window_spend_before_msats),
                    _ => None,
                })
                .unwrap_or(0),
            Err(CommandError::Rejected(SpendLedgerError::Denied(mut denial))) => {
                // The caller's quote is the invoice's amount; the message names the reserved total.
                denial.quoted_amount_msats = Some(facts.decoded.amount_msats.get());
                denial.message = format!(
                    "{} (invoice {} msats + fee limit {} msats)",
                    denial.message,
                    facts.decoded.amount_msats.get(),
                    attempt.fee_limit_msats.get()
                );
                self.payment_command(
                    payment_hash,
                    PaymentCommand::DenyPayment {
                        attempt: attempt_number,
                        denial,
                    },
                )
                .await?;
                return Ok(false);
            }
            Err(error) => {
                // The reservation may or may not have been written; nothing was sent. Close the
                // attempt and release whatever may have been reserved.
                self.fail(
                    payment_hash,
                    &hash,
                    attempt_number,
                    "reservation_failed",
                    &error.to_string(),
                )
                .await?;
                return Ok(false);
            }
        };
        self.payment_command(
            payment_hash,
            PaymentCommand::RecordReservation {
                attempt: attempt_number,
                window_spend_before_msats: window_before,
            },
        )
        .await?;

        if !self.holds_lease() {
            // Not sent; whoever holds the wallet reconciles the attempt.
            return Ok(false);
        }
        // No answer in time is an unknown outcome like any other (LND may be registering it).
        let sent = match tokio::time::timeout(
            self.config.node_call_timeout,
            self.node.send(SendRequest {
                invoice: facts.invoice.clone(),
                fee_limit_msats: attempt.fee_limit_msats,
                timeout_secs: self.config.send_timeout_secs,
            }),
        )
        .await
        {
            Ok(sent) => sent,
            Err(_) => Err(NodeError::OutcomeUnknown(format!(
                "SendPaymentV2 did not answer within {:?}",
                self.config.node_call_timeout
            ))),
        };
        let mut updates = match sent {
            Ok(updates) => updates,
            Err(error @ (NodeError::AlreadyPaid | NodeError::AlreadyInFlight)) => {
                // LND's control tower already knows this hash: follow what it knows.
                self.payment_command(
                    payment_hash,
                    PaymentCommand::MarkReconcileRequired {
                        attempt: attempt_number,
                        reason: error.to_string(),
                    },
                )
                .await?;
                return Ok(true);
            }
            // LND refused before any payment existed: nothing was sent.
            Err(NodeError::InvalidInvoice(message)) | Err(NodeError::Rejected(message)) => {
                self.note_error("payment_failed", &message);
                self.fail(
                    payment_hash,
                    &hash,
                    attempt_number,
                    "rejected_by_node",
                    &message,
                )
                .await?;
                return Ok(false);
            }
            Err(error @ NodeError::AuthRefused(_)) => {
                let _ = self.node_trouble(&error);
                self.fail(
                    payment_hash,
                    &hash,
                    attempt_number,
                    "node_auth_refused",
                    &error.to_string(),
                )
                .await?;
                return Ok(false);
            }
            // Unknown, Internal, Unavailable, a deadline, a transport error: LND may have the
            // payment. Keep the reservation and find out with TrackPaymentV2.
            Err(other) => {
                self.note_error("payment_reconcile_required", &other.to_string());
                self.payment_command(
                    payment_hash,
                    PaymentCommand::MarkReconcileRequired {
                        attempt: attempt_number,
                        reason: other.to_string(),
                    },
                )
                .await?;
                return Ok(true);
            }
        };
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(false),
                next = updates.next() => next,
            };
            match next {
                Some(Ok(PaymentProgress::InFlight)) => {
                    state.send_replace(DriverState::Tracked);
                    continue;
                }
                Some(Ok(progress @ PaymentProgress::Succeeded { .. })) => {
                    self.settle(payment_hash, &hash, attempt_number, progress)
                        .await?;
                    return Ok(false);
                }
                Some(Ok(PaymentProgress::Failed { reason })) => {
                    self.note_error("payment_failed", &reason);
                    self.fail(
                        payment_hash,
                        &hash,
                        attempt_number,
                        &reason,
                        "payment failed",
                    )
                    .await?;
                    return Ok(false);
                }
                Some(Ok(PaymentProgress::NotFound)) | Some(Err(_)) | None => {
                    let reason = match next {
                        Some(Err(e)) => e.to_string(),
                        _ => "the payment stream ended without an outcome".to_owned(),
                    };
                    self.note_error("payment_reconcile_required", &reason);
                    self.payment_command(
                        payment_hash,
                        PaymentCommand::MarkReconcileRequired {
                            attempt: attempt_number,
                            reason,
                        },
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Drives a payment to an outcome: sends a requested attempt, and follows one whose outcome
    /// is unknown with TrackPaymentV2 until LND gives one; finally makes the ledger agree.
    async fn drive(
        &self,
        payment_hash: &str,
        state: &watch::Sender<DriverState>,
    ) -> anyhow::Result<()> {
        let mut delay = Backoff::new(Duration::from_millis(100), TRACK_RETRY_MAX);
        loop {
            // Never start sending (or following) once shutdown began or the wallet's lease is
            // not ours: LND keeps what it has, and the lease holder reconciles it.
            if self.shutdown.is_cancelled() || !self.holds_lease() {
                return Ok(());
            }
            let payment = self.load_payment(payment_hash).await?;
            let Some(open) = payment.open_attempt().cloned() else {
                return self.settle_ledger(&payment).await;
            };
            if open.status == AttemptStatus::Requested {
                // Whether it settled, failed or needs tracking, the next turn re-reads the journal.
                self.send_attempt(&payment, open.number, state).await?;
                if self.shutdown.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            let hash = payment
                .payment_hash()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("payment without facts"))?;
            let tracked =
                match tokio::time::timeout(self.config.node_call_timeout, self.node.track(&hash))
                    .await
                {
                    Ok(tracked) => tracked,
                    Err(_) => Err(NodeError::Unavailable(format!(
                        "TrackPaymentV2 did not answer within {:?}",
                        self.config.node_call_timeout
                    ))),
                };
            match tracked {
                Ok(mut updates) => loop {
                    let next = tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        next = updates.next() => next,
                    };
                    match next {
                        Some(Ok(PaymentProgress::InFlight)) => {
                            state.send_replace(DriverState::Tracked);
                            continue;
                        }
                        Some(Ok(progress @ PaymentProgress::Succeeded { .. })) => {
                            return self
                                .settle(payment_hash, &hash, open.number, progress)
                                .await;
                        }
                        Some(Ok(PaymentProgress::Failed { reason })) => {
                            return self
                                .fail(payment_hash, &hash, open.number, &reason, "payment failed")
                                .await;
                        }
                        Some(Ok(PaymentProgress::NotFound))
                            if self.engine.now().millis_since(payment.updated_at)
                                < u64::try_from(self.config.not_found_grace.as_millis())
                                    .unwrap_or(u64::MAX) =>
                        {
                            // LND may still be registering a send whose answer was lost.
                            break;
                        }
                        Some(Ok(PaymentProgress::NotFound)) => {
                            return self
                                .fail(
                                    payment_hash,
                                    &hash,
                                    open.number,
                                    "not_sent",
                                    "the payment never reached the node (interrupted before sending); \
                                     retry with a new request id",
                                )
                                .await;
                        }
                        Some(Err(_)) | None => break,
                    }
                },
                Err(error) => {
                    let _ = self.node_trouble(&error);
                }
            }
            if !delay.sleep(&self.shutdown).await {
                return Ok(());
            }
        }
    }

    /// Records a settlement: ledger commit (which yields the window spend after it), then the
    /// payment's success with its receipt.
    async fn settle(
        &self,
        payment_hash: &str,
        hash: &PaymentHash,
        attempt_number: u32,
        progress: PaymentProgress,
    ) -> anyhow::Result<()> {
        let PaymentProgress::Succeeded {
            preimage_hex,
            value_msats,
            fee_msats,
            settled_at_ms,
        } = progress
        else {
            anyhow::bail!("settle called without a success");
        };
        let payment = self.load_payment(payment_hash).await?;
        let facts = payment
            .invoice
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no facts"))?;
        let attempt = payment
            .attempt(attempt_number)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("attempt missing"))?;
        let settled = if value_msats > 0 {
            value_msats
        } else {
            facts.decoded.amount_msats.get()
        };
        let paid_at_ms = settled_at_ms.unwrap_or_else(now_ms);
        let receipt = build_receipt(&ReceiptInput {
            request_id: &attempt.request_id,
            wallet_id: facts.wallet_id.as_str(),
            host: &attempt.host,
            payment_id: hash.as_str(),
            invoice_hash: &facts.invoice_hash,
            quoted_amount_msats: facts.decoded.amount_msats.get(),
            settled_amount_msats: settled,
            preimage_hex: &preimage_hex,
            paid_at_ms,
        });
        let events = self
            .ledger_command(SpendLedgerCommand::CommitSpend {
                payment_hash: hash.clone(),
                attempt: attempt_number,
                settled_msats: settled,
                fee_msats,
                receipt_id: receipt.receipt_id.clone(),
                paid_at_ms,
                run_id: attempt.run_id.clone(),
                owner: attempt.owner.clone(),
                window_ms: self.config.policy.caps.window_ms,
            })
            .await
            .map_err(|e| anyhow::anyhow!("commit spend: {e}"))?;
        let window_after = match events.iter().find_map(|e| match e {
            SpendLedgerEvent::SpendCommitted {
                window_spend_after_msats,
                ..
            } => Some(*window_spend_after_msats),
            _ => None,
        }) {
            Some(after) => after,
            None => {
                let (ledger, _) = self
                    .engine
                    .load::<SpendLedger>(self.config.wallet_id.as_str())
                    .await
                    .map_err(|e| anyhow::anyhow!("load ledger: {e}"))?;
                ledger.window_spend(self.engine.now(), self.config.policy.caps.window_ms, None)
            }
        };
        self.payment_command(
            payment_hash,
            PaymentCommand::RecordSuccess {
                attempt: attempt_number,
                preimage_hex,
                settled_amount_msats: settled,
                fee_msats,
                paid_at_ms,
                window_spend_after_msats: window_after,
            },
        )
        .await?;
        let mut status = self.status.lock().expect("status lock");
        status.last_payment_id = Some(hash.to_string());
        status.last_payment_at_ms = Some(paid_at_ms);
        status.last_error_code = None;
        status.last_error_message = None;
        status.updated_at_ms = now_ms();
        Ok(())
    }

    async fn fail(
        &self,
        payment_hash: &str,
        hash: &PaymentHash,
        attempt: u32,
        reason: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        self.payment_command(
            payment_hash,
            PaymentCommand::RecordFailure {
                attempt,
                reason: reason.to_owned(),
                message: message.to_owned(),
            },
        )
        .await?;
        self.ledger_command(SpendLedgerCommand::ReleaseSpend {
            payment_hash: hash.clone(),
            attempt,
            reason: reason.to_owned(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("release spend: {e}"))?;
        Ok(())
    }

    /// Makes the ledger agree with a closed payment: commit a settlement it missed, release
    /// reservations of attempts that ended without paying.
    async fn settle_ledger(&self, payment: &Payment) -> anyhow::Result<()> {
        let Some(hash) = payment.payment_hash().cloned() else {
            return Ok(());
        };
        for attempt in &payment.attempts {
            match attempt.status {
                AttemptStatus::Succeeded => {
                    if let Some(s) = &payment.settlement {
                        self.ledger_command(SpendLedgerCommand::CommitSpend {
                            payment_hash: hash.clone(),
                            attempt: attempt.number,
                            settled_msats: s.settled_amount_msats,
                            fee_msats: s.fee_msats,
                            receipt_id: s.receipt.receipt_id.clone(),
                            paid_at_ms: s.paid_at_ms,
                            run_id: attempt.run_id.clone(),
                            owner: attempt.owner.clone(),
                            window_ms: self.config.policy.caps.window_ms,
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("commit spend: {e}"))?;
                    }
                }
                AttemptStatus::Failed | AttemptStatus::Denied => {
                    self.ledger_command(SpendLedgerCommand::ReleaseSpend {
                        payment_hash: hash.clone(),
                        attempt: attempt.number,
                        reason: attempt.status.as_str().to_owned(),
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("release spend: {e}"))?;
                }
                _ => {}
            }
        }
        Ok(())
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

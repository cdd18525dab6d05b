//! Admission: a payment request is checked (request id, host and per-request caps, the node's
//! reading of the invoice, the quote cap), bound to an attempt with `RequestPayment`, and answered
//! with the attempt's outcome once its driver gives one (or `payment_pending` at the deadline).

use std::sync::Arc;
use std::time::Duration;

use aggregates::payment::services::NodeError;
use aggregates::payment::types::sha256_hex;
use aggregates::payment::{
    AttemptStatus, Msat, Network, Payment, PaymentCommand, PaymentError, PaymentEvent,
    PaymentRequest,
};
use engine::clock::now_ms;
use engine::{CommandError, IdempotencyRequest, Journal, OutcomeKind};
use tokio::time::Instant;

use super::driver::DriverState;
use super::{
    internal, PayError, PayInput, PaySuccess, PaymentExecutor, PaymentResult, LEASE_ELSEWHERE,
};

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
}

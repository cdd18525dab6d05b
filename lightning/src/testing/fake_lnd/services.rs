//! The fake LND's gRPC services: `Lightning` (GetInfo, balances, DecodePayReq, AddInvoice) and
//! `Router` (SendPaymentV2, TrackPaymentV2), answering from the shared scripted state.
#![allow(deprecated)] // LND keeps deprecated fields (`Payment.value`, `Chain.chain`) that clients still read.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lnd_grpc_rust::lnrpc::{self, payment::PaymentStatus};
use lnd_grpc_rust::routerrpc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{
    insert_invoice, random_32, unix_now, Behavior, FakeState, PaymentRecord, SendFault,
    FAKE_NODE_PUBKEY,
};
use crate::fake_stubs::lnrpc::lightning_server::Lightning;
use crate::fake_stubs::routerrpc::router_server::Router;

pub(super) struct FakeLightning {
    pub(super) state: Arc<FakeState>,
}

pub(super) struct FakeRouter {
    pub(super) state: Arc<FakeState>,
}

type PaymentStream = Pin<Box<dyn Stream<Item = Result<lnrpc::Payment, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lightning for FakeLightning {
    async fn get_info(
        &self,
        _request: Request<lnrpc::GetInfoRequest>,
    ) -> Result<Response<lnrpc::GetInfoResponse>, Status> {
        self.state.count("GetInfo");
        Ok(Response::new(lnrpc::GetInfoResponse {
            version: "0.19.0-beta fake".into(),
            identity_pubkey: FAKE_NODE_PUBKEY.into(),
            alias: "fake-lnd".into(),
            block_height: 800_000,
            synced_to_chain: true,
            synced_to_graph: true,
            chains: vec![lnrpc::Chain {
                chain: "bitcoin".into(),
                network: self.state.network().as_str().into(),
            }],
            ..Default::default()
        }))
    }

    async fn wallet_balance(
        &self,
        _request: Request<lnrpc::WalletBalanceRequest>,
    ) -> Result<Response<lnrpc::WalletBalanceResponse>, Status> {
        self.state.count("WalletBalance");
        Ok(Response::new(lnrpc::WalletBalanceResponse {
            total_balance: 1_000_000,
            confirmed_balance: 1_000_000,
            ..Default::default()
        }))
    }

    async fn channel_balance(
        &self,
        _request: Request<lnrpc::ChannelBalanceRequest>,
    ) -> Result<Response<lnrpc::ChannelBalanceResponse>, Status> {
        self.state.count("ChannelBalance");
        let msat = *self.state.channel_local_msats.lock().expect("lock");
        Ok(Response::new(lnrpc::ChannelBalanceResponse {
            balance: i64::try_from(msat / 1000).unwrap_or(i64::MAX),
            local_balance: Some(lnrpc::Amount {
                sat: msat / 1000,
                msat,
            }),
            ..Default::default()
        }))
    }

    async fn decode_pay_req(
        &self,
        request: Request<lnrpc::PayReqString>,
    ) -> Result<Response<lnrpc::PayReq>, Status> {
        self.state.count("DecodePayReq");
        let pay_req = request.into_inner().pay_req;
        let invoices = self.state.invoices.lock().expect("lock");
        let record = invoices
            .get(pay_req.trim())
            .ok_or_else(|| Status::unknown("invalid index of 1: checksum failed"))?;
        let amount = i64::try_from(record.invoice.amount_msats).unwrap_or(i64::MAX);
        Ok(Response::new(lnrpc::PayReq {
            destination: FAKE_NODE_PUBKEY.into(),
            payment_hash: record.invoice.payment_hash.clone(),
            num_satoshis: amount / 1000,
            num_msat: amount,
            timestamp: record.created_at,
            expiry: record.expiry,
            description: record.memo.clone(),
            cltv_expiry: 80,
            ..Default::default()
        }))
    }

    async fn add_invoice(
        &self,
        request: Request<lnrpc::Invoice>,
    ) -> Result<Response<lnrpc::AddInvoiceResponse>, Status> {
        self.state.count("AddInvoice");
        let invoice = request.into_inner();
        if invoice.value_msat <= 0 && invoice.value <= 0 {
            return Err(Status::invalid_argument(
                "amount must be positive in this fake",
            ));
        }
        let preimage: [u8; 32] = if invoice.r_preimage.is_empty() {
            random_32()
        } else {
            invoice
                .r_preimage
                .as_slice()
                .try_into()
                .map_err(|_| Status::invalid_argument("preimage must be 32 bytes"))?
        };
        let amount = if invoice.value_msat > 0 {
            invoice.value_msat
        } else {
            invoice.value * 1000
        };
        let created = insert_invoice(
            &self.state,
            u64::try_from(amount).unwrap_or(0),
            &invoice.memo,
            unix_now(),
            if invoice.expiry > 0 {
                invoice.expiry
            } else {
                86_400
            },
            self.state.network(),
            preimage,
        );
        Ok(Response::new(lnrpc::AddInvoiceResponse {
            r_hash: hex::decode(&created.payment_hash).expect("hex"),
            payment_request: created.payment_request,
            add_index: 1,
            payment_addr: random_32().to_vec(),
        }))
    }
}

fn in_flight(hash: &str, request: &str, amount_msats: i64) -> lnrpc::Payment {
    lnrpc::Payment {
        payment_hash: hash.to_owned(),
        value_msat: amount_msats,
        value_sat: amount_msats / 1000,
        value: amount_msats / 1000,
        payment_request: request.to_owned(),
        status: PaymentStatus::InFlight as i32,
        creation_time_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        ..Default::default()
    }
}

/// Streams a payment's states from now until it is final.
fn follow(mut rx: watch::Receiver<lnrpc::Payment>, cut_after_first: bool) -> PaymentStream {
    Box::pin(async_stream(move |tx| async move {
        let mut first = true;
        loop {
            let current = rx.borrow_and_update().clone();
            let status = PaymentStatus::try_from(current.status).unwrap_or(PaymentStatus::Unknown);
            if tx.send(Ok(current)).await.is_err() {
                return;
            }
            if matches!(status, PaymentStatus::Succeeded | PaymentStatus::Failed) {
                return;
            }
            if first && cut_after_first {
                let _ = tx
                    .send(Err(Status::unavailable("transport is closing")))
                    .await;
                return;
            }
            first = false;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// A tiny stream builder over an mpsc channel (keeps the fake free of extra macro crates).
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<lnrpc::Payment, Status>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<lnrpc::Payment, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl FakeRouter {
    fn settle(state: &FakeState, hash: &str, behavior: &Behavior) {
        let payments = state.payments.lock().expect("lock");
        let Some(record) = payments.get(hash) else {
            return;
        };
        let mut payment = record.state.borrow().clone();
        match behavior {
            Behavior::Fail { reason, .. } => {
                payment.status = PaymentStatus::Failed as i32;
                payment.failure_reason = *reason as i32;
            }
            _ => {
                let mut invoices = state.invoices.lock().expect("lock");
                let preimage = invoices
                    .values_mut()
                    .find(|r| r.invoice.payment_hash == hash)
                    .map(|r| {
                        r.settled = true;
                        r.invoice.preimage_hex.clone()
                    })
                    .unwrap_or_default();
                let fee = *state.fee_msats.lock().expect("lock");
                let fee = i64::try_from(fee).unwrap_or(0);
                payment.status = PaymentStatus::Succeeded as i32;
                payment.payment_preimage = preimage;
                payment.fee_msat = fee;
                payment.fee_sat = fee / 1000;
                payment.fee = fee / 1000;
                let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
                payment.htlcs = vec![lnrpc::HtlcAttempt {
                    attempt_id: 1,
                    status: lnrpc::htlc_attempt::HtlcStatus::Succeeded as i32,
                    attempt_time_ns: payment.creation_time_ns,
                    resolve_time_ns: now_ns,
                    ..Default::default()
                }];
                let mut local = state.channel_local_msats.lock().expect("lock");
                *local = local.saturating_sub(u64::try_from(payment.value_msat + fee).unwrap_or(0));
            }
        }
        record.state.send_replace(payment);
    }

    /// Drives a payment to its end according to `behavior`.
    fn run(state: Arc<FakeState>, hash: String, behavior: Behavior) {
        tokio::spawn(async move {
            let mut behavior = behavior;
            loop {
                match behavior {
                    Behavior::Succeed { after } | Behavior::Fail { after, .. } => {
                        tokio::time::sleep(after).await;
                        Self::settle(&state, &hash, &behavior);
                        return;
                    }
                    Behavior::CutStream { then } => behavior = *then,
                    Behavior::Hang => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if let Some(record) = state.payments.lock().expect("lock").get_mut(&hash) {
                            record.release = Some(tx);
                        }
                        match rx.await {
                            Ok(next) => behavior = next,
                            Err(_) => return,
                        }
                    }
                }
            }
        });
    }
}

#[tonic::async_trait]
impl Router for FakeRouter {
    async fn send_payment_v2(
        &self,
        request: Request<routerrpc::SendPaymentRequest>,
    ) -> Result<Response<PaymentStream>, Status> {
        self.state.count("SendPaymentV2");
        let fault = self.state.send_fault.lock().expect("lock").take();
        let request = request.into_inner();
        let record = self
            .state
            .invoices
            .lock()
            .expect("lock")
            .get(request.payment_request.trim())
            .cloned()
            .ok_or_else(|| Status::invalid_argument("invalid payment request: checksum failed"))?;
        let hash = record.invoice.payment_hash.clone();
        *self
            .state
            .send_calls
            .lock()
            .expect("lock")
            .entry(hash.clone())
            .or_default() += 1;
        if let Some(SendFault::Status {
            code,
            message,
            registered: false,
        }) = &fault
        {
            return Err(Status::new(*code, message.clone()));
        }
        if record.created_at + record.expiry <= unix_now() {
            return Err(Status::invalid_argument("invoice expired"));
        }
        let behavior = {
            let mut payments = self.state.payments.lock().expect("lock");
            if let Some(existing) = payments.get(&hash) {
                let status = PaymentStatus::try_from(existing.state.borrow().status)
                    .unwrap_or(PaymentStatus::Unknown);
                match status {
                    PaymentStatus::Succeeded => {
                        return Err(Status::already_exists("invoice is already paid"))
                    }
                    PaymentStatus::Failed => {}
                    _ => return Err(Status::already_exists("payment is in transition")),
                }
            }
            let (tx, _) = watch::channel(in_flight(
                &hash,
                &record.invoice.payment_request,
                i64::try_from(record.invoice.amount_msats).unwrap_or(0),
            ));
            payments.insert(
                hash.clone(),
                PaymentRecord {
                    state: tx,
                    release: None,
                },
            );
            self.state
                .behaviors
                .lock()
                .expect("lock")
                .get(&hash)
                .cloned()
                .or_else(|| self.state.default_behavior.lock().expect("lock").clone())
                .unwrap_or_else(Behavior::succeed)
        };
        let rx = self
            .state
            .payments
            .lock()
            .expect("lock")
            .get(&hash)
            .map(|p| p.state.subscribe())
            .expect("inserted above");
        let cut = matches!(behavior, Behavior::CutStream { .. });
        Self::run(self.state.clone(), hash, behavior);
        match fault {
            Some(SendFault::AcceptThenDie) => {
                self.state.go_down();
                // The connection is gone; this answer never reaches the client.
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err(Status::unavailable("the node went away"))
            }
            Some(SendFault::AcceptThenStall { for_ }) => {
                tokio::time::sleep(for_).await;
                Ok(Response::new(follow(rx, cut)))
            }
            Some(SendFault::Status { code, message, .. }) => Err(Status::new(code, message)),
            None => Ok(Response::new(follow(rx, cut))),
        }
    }

    async fn track_payment_v2(
        &self,
        request: Request<routerrpc::TrackPaymentRequest>,
    ) -> Result<Response<PaymentStream>, Status> {
        self.state.count("TrackPaymentV2");
        let hash = hex::encode(request.into_inner().payment_hash);
        let rx = self
            .state
            .payments
            .lock()
            .expect("lock")
            .get(&hash)
            .map(|p| p.state.subscribe())
            .ok_or_else(|| Status::not_found("payment isn't initiated"))?;
        Ok(Response::new(follow(rx, false)))
    }
}

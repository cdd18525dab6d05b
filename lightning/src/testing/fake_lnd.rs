//! An in-process fake LND: real gRPC over TLS (a self-signed certificate for 127.0.0.1), checking
//! the `macaroon` metadata like LND does, serving `lnd_grpc_rust`'s own prost messages through
//! server stubs compiled from LND's `.proto` files. It implements what the runtime calls —
//! `GetInfo`, `WalletBalance`, `ChannelBalance`, `DecodePayReq`, `AddInvoice`, router
//! `SendPaymentV2` and `TrackPaymentV2` — and one fake node both issues and settles invoices, so a
//! buyer/seller loop runs for real. Each payment hash follows a scripted [`Behavior`].
//!
//! Clients reach the node through a TCP front on the node's address that pipes bytes (TLS stays end
//! to end) to the gRPC server, so a test can take the node off the network and back
//! ([`FakeLnd::go_down`], [`FakeLnd::come_back`]: connections drop, new ones are refused) while
//! its payments carry on, and script faults: [`SendFault`] for the next SendPaymentV2 ("accept
//! then die before replying", an error status with or without registering the payment) and
//! [`FakeLnd::refuse_auth`] (the macaroon is refused as LND words it).
#![allow(deprecated)] // LND keeps deprecated fields (`Payment.value`, `Chain.chain`) that clients still read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregates::payment::Network;
use futures::Stream;
use lnd_grpc_rust::lnrpc::{self, payment::PaymentStatus};
use lnd_grpc_rust::routerrpc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::fake_stubs::lnrpc::lightning_server::{Lightning, LightningServer};
use crate::fake_stubs::routerrpc::router_server::{Router, RouterServer};
use crate::lnd::LndConfig;

/// The fake node's identity key.
pub const FAKE_NODE_PUBKEY: &str =
    "02fa4e1e5c5f5b5b5e7a8a3b2f3a7f9c1d2e3f405162738495a6b7c8d9eaf0b1c2";

/// How the fake settles a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// In flight, then settled after the delay.
    Succeed { after: Duration },
    /// In flight, then failed with LND's failure reason after the delay.
    Fail {
        reason: lnrpc::PaymentFailureReason,
        after: Duration,
    },
    /// In flight until [`FakeLnd::release`] says how it ends.
    Hang,
    /// The SendPaymentV2 stream sends one in-flight update and then breaks; the payment itself
    /// carries on as `then` says (TrackPaymentV2 sees it).
    CutStream { then: Box<Behavior> },
}

impl Behavior {
    pub fn succeed() -> Self {
        Behavior::Succeed {
            after: Duration::from_millis(20),
        }
    }

    pub fn fail_no_route() -> Self {
        Behavior::Fail {
            reason: lnrpc::PaymentFailureReason::FailureReasonNoRoute,
            after: Duration::from_millis(20),
        }
    }
}

/// A fault for the next SendPaymentV2 (taken by that call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendFault {
    /// Register the payment (it carries on as its [`Behavior`] says), then take the node off the
    /// network before replying: the client's connection drops with no answer.
    AcceptThenDie,
    /// Register the payment, then keep the call open without answering for `for_`.
    AcceptThenStall { for_: Duration },
    /// Answer with this gRPC status; with `registered`, the payment was registered first (LND
    /// accepted it and then failed to say so), else nothing exists.
    Status {
        code: tonic::Code,
        message: String,
        registered: bool,
    },
}

/// Commands to the TCP front.
enum FrontCommand {
    /// Drop every connection and refuse new ones.
    Down,
    /// Accept again on this (re-bound) listener.
    Up(tokio::net::TcpListener),
}

/// An invoice the fake issued.
#[derive(Clone, Debug)]
pub struct FakeInvoice {
    pub payment_request: String,
    pub payment_hash: String,
    pub preimage_hex: String,
    pub amount_msats: u64,
}

#[derive(Clone, Debug)]
struct InvoiceRecord {
    invoice: FakeInvoice,
    created_at: i64,
    expiry: i64,
    memo: String,
    settled: bool,
}

struct PaymentRecord {
    state: watch::Sender<lnrpc::Payment>,
    /// For `Hang`: the test's decision.
    release: Option<tokio::sync::oneshot::Sender<Behavior>>,
}

#[derive(Default)]
struct FakeState {
    /// The next SendPaymentV2's fault.
    send_fault: Mutex<Option<SendFault>>,
    /// When set, every call is refused with this message (as LND refuses a macaroon: `Unknown`).
    auth_refusal: Mutex<Option<String>>,
    /// The TCP front's command channel.
    front: Mutex<Option<tokio::sync::mpsc::UnboundedSender<FrontCommand>>>,
    invoices: Mutex<HashMap<String, InvoiceRecord>>,
    payments: Mutex<HashMap<String, PaymentRecord>>,
    behaviors: Mutex<HashMap<String, Behavior>>,
    default_behavior: Mutex<Option<Behavior>>,
    send_calls: Mutex<HashMap<String, usize>>,
    calls: Mutex<HashMap<&'static str, usize>>,
    network: Mutex<Option<Network>>,
    fee_msats: Mutex<u64>,
    channel_local_msats: Mutex<u64>,
}

impl FakeState {
    fn count(&self, method: &'static str) {
        *self.calls.lock().expect("lock").entry(method).or_default() += 1;
    }

    fn go_down(&self) {
        if let Some(front) = self.front.lock().expect("lock").as_ref() {
            let _ = front.send(FrontCommand::Down);
        }
    }

    fn network(&self) -> Network {
        self.network
            .lock()
            .expect("lock")
            .unwrap_or(Network::Regtest)
    }
}

/// A running fake LND. Dropping it stops the server.
pub struct FakeLnd {
    addr: SocketAddr,
    cert_pem: String,
    macaroon_hex: String,
    state: Arc<FakeState>,
    shutdown: CancellationToken,
}

impl Drop for FakeLnd {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

const BECH32: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn fake_bolt11(network: Network, amount_msats: u64) -> String {
    let mut body = String::from("pp5");
    for byte in random_32().iter().chain(random_32().iter()) {
        body.push(BECH32[(*byte % 32) as usize] as char);
    }
    // BOLT 11 amounts: `p` is pico-bitcoin, 10 per millisatoshi.
    format!(
        "ln{}{}p1{}",
        network.invoice_currency(),
        amount_msats * 10,
        body
    )
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl FakeLnd {
    /// Starts a regtest fake on a random port.
    ///
    /// # Panics
    /// When the port or the certificate cannot be set up (test environment problems).
    pub async fn start() -> FakeLnd {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts a fake on `addr` (e.g. the port a killed test process used).
    ///
    /// # Panics
    /// As [`FakeLnd::start`].
    pub async fn start_on(addr: &str) -> FakeLnd {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("self-signed certificate");
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
        let macaroon_hex = hex::encode(random_32());
        let state = Arc::new(FakeState::default());
        *state.channel_local_msats.lock().expect("lock") = 5_000_000_000;
        let front = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind fake LND");
        let addr = front.local_addr().expect("local addr");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake LND's inner listener");
        let inner = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let (front_tx, front_rx) = tokio::sync::mpsc::unbounded_channel();
        *state.front.lock().expect("lock") = Some(front_tx);
        tokio::spawn(run_front(front, inner, front_rx, shutdown.clone()));

        let expected = macaroon_hex.clone();
        let refusal_state = state.clone();
        let check = move |request: Request<()>| -> Result<Request<()>, Status> {
            if let Some(message) = refusal_state.auth_refusal.lock().expect("lock").clone() {
                return Err(Status::unknown(message));
            }
            match request
                .metadata()
                .get("macaroon")
                .and_then(|v| v.to_str().ok())
            {
                Some(given) if given == expected => Ok(request),
                Some(_) => Err(Status::unknown(
                    "verification failed: signature mismatch after caveat verification",
                )),
                None => Err(Status::unknown("expected 1 macaroon, got 0")),
            }
        };
        let lightning = LightningServer::with_interceptor(
            FakeLightning {
                state: state.clone(),
            },
            check.clone(),
        );
        let router = RouterServer::with_interceptor(
            FakeRouter {
                state: state.clone(),
            },
            check,
        );
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem));
        let token = shutdown.clone();
        tokio::spawn(async move {
            let result = Server::builder()
                .tls_config(tls)
                .expect("tls config")
                .add_service(lightning)
                .add_service(router)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    token.cancelled_owned(),
                )
                .await;
            if let Err(error) = result {
                eprintln!("fake LND stopped: {error}");
            }
        });
        FakeLnd {
            addr,
            cert_pem,
            macaroon_hex,
            state,
            shutdown,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the node off the network: open connections drop, new ones are refused. Payments in
    /// flight carry on.
    pub fn go_down(&self) {
        self.state.go_down();
    }

    /// Puts the node back on its address (after [`FakeLnd::go_down`] or a [`SendFault::AcceptThenDie`]).
    ///
    /// # Panics
    /// When the address cannot be bound again.
    pub async fn come_back(&self) {
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(bound) => {
                    listener = Some(bound);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("re-bind the fake LND's address");
        if let Some(front) = self.state.front.lock().expect("lock").as_ref() {
            let _ = front.send(FrontCommand::Up(listener));
        }
    }

    /// Scripts the next SendPaymentV2.
    pub fn set_send_fault(&self, fault: SendFault) {
        *self.state.send_fault.lock().expect("lock") = Some(fault);
    }

    /// From now on every call is refused as LND refuses a macaroon, with `message` (e.g.
    /// `permission denied`); `None` accepts the macaroon again.
    pub fn refuse_auth(&self, message: Option<&str>) {
        *self.state.auth_refusal.lock().expect("lock") = message.map(str::to_owned);
    }

    /// How to connect to this fake (the macaroon it accepts).
    pub fn config(&self) -> LndConfig {
        LndConfig {
            address: self.addr.to_string(),
            tls_cert_pem: self.cert_pem.clone().into_bytes(),
            macaroon_hex: self.macaroon_hex.clone(),
        }
    }

    /// A config with a wrong macaroon.
    pub fn config_with_bad_macaroon(&self) -> LndConfig {
        LndConfig {
            macaroon_hex: hex::encode(random_32()),
            ..self.config()
        }
    }

    /// The network the node (and its invoices) are on.
    pub fn set_network(&self, network: Network) {
        *self.state.network.lock().expect("lock") = Some(network);
    }

    /// Routing fee charged on every successful payment.
    pub fn set_fee_msats(&self, fee: u64) {
        *self.state.fee_msats.lock().expect("lock") = fee;
    }

    /// Behavior for payments with no specific one (default: succeed quickly).
    pub fn set_default_behavior(&self, behavior: Behavior) {
        *self.state.default_behavior.lock().expect("lock") = Some(behavior);
    }

    pub fn set_behavior(&self, payment_hash: &str, behavior: Behavior) {
        self.state
            .behaviors
            .lock()
            .expect("lock")
            .insert(payment_hash.to_owned(), behavior);
    }

    /// Issues an invoice on the node's network, created now, expiring in an hour.
    pub fn issue_invoice(&self, amount_msats: u64, memo: &str) -> FakeInvoice {
        self.issue_invoice_with(amount_msats, memo, unix_now(), 3600, self.state.network())
    }

    /// Issues an invoice with explicit creation time, expiry and network.
    pub fn issue_invoice_with(
        &self,
        amount_msats: u64,
        memo: &str,
        created_at: i64,
        expiry: i64,
        network: Network,
    ) -> FakeInvoice {
        self.insert_invoice(amount_msats, memo, created_at, expiry, network, random_32())
    }

    fn insert_invoice(
        &self,
        amount_msats: u64,
        memo: &str,
        created_at: i64,
        expiry: i64,
        network: Network,
        preimage: [u8; 32],
    ) -> FakeInvoice {
        insert_invoice(
            &self.state,
            amount_msats,
            memo,
            created_at,
            expiry,
            network,
            preimage,
        )
    }

    /// Ends a `Hang`ing payment as `outcome` says (waits up to 5 s for the payment to hang).
    ///
    /// # Panics
    /// When no such payment is hanging.
    pub async fn release(&self, payment_hash: &str, outcome: Behavior) {
        for _ in 0..500 {
            let sender = self
                .state
                .payments
                .lock()
                .expect("lock")
                .get_mut(payment_hash)
                .and_then(|p| p.release.take());
            if let Some(sender) = sender {
                let _ = sender.send(outcome);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("payment {payment_hash} is not hanging");
    }

    /// How many SendPaymentV2 calls reached the node for this hash (accepted or refused).
    pub fn send_count(&self, payment_hash: &str) -> usize {
        self.state
            .send_calls
            .lock()
            .expect("lock")
            .get(payment_hash)
            .copied()
            .unwrap_or(0)
    }

    /// How many calls of `method` (e.g. `"TrackPaymentV2"`) the node served.
    pub fn calls(&self, method: &str) -> usize {
        self.state
            .calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|(name, _)| **name == method)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The node's view of a payment, if it has one.
    pub fn payment_status(&self, payment_hash: &str) -> Option<PaymentStatus> {
        self.state
            .payments
            .lock()
            .expect("lock")
            .get(payment_hash)
            .map(|p| {
                PaymentStatus::try_from(p.state.borrow().status).unwrap_or(PaymentStatus::Unknown)
            })
    }

    /// Whether an invoice this node issued has been paid.
    pub fn invoice_settled(&self, payment_hash: &str) -> bool {
        self.state
            .invoices
            .lock()
            .expect("lock")
            .values()
            .any(|r| r.invoice.payment_hash == payment_hash && r.settled)
    }
}

/// The TCP front: accepts on the node's address and pipes each connection to the gRPC server,
/// until told to go down (connections dropped, listener closed) and back up.
async fn run_front(
    first: tokio::net::TcpListener,
    inner: SocketAddr,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<FrontCommand>,
    shutdown: CancellationToken,
) {
    let mut listener = Some(first);
    loop {
        let Some(current) = listener.take() else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(FrontCommand::Up(bound)) => listener = Some(bound),
                    Some(FrontCommand::Down) => {}
                    None => return,
                },
            }
            continue;
        };
        let connections = shutdown.child_token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(FrontCommand::Down) | None => {
                        connections.cancel();
                        break;
                    }
                    Some(FrontCommand::Up(bound)) => {
                        connections.cancel();
                        listener = Some(bound);
                        break;
                    }
                },
                accepted = current.accept() => {
                    if let Ok((socket, _)) = accepted {
                        tokio::spawn(pipe(socket, inner, connections.clone()));
                    }
                }
            }
        }
        drop(current);
    }
}

async fn pipe(
    mut client: tokio::net::TcpStream,
    inner: SocketAddr,
    connections: CancellationToken,
) {
    let Ok(mut server) = tokio::net::TcpStream::connect(inner).await else {
        return;
    };
    tokio::select! {
        _ = connections.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}

fn insert_invoice(
    state: &FakeState,
    amount_msats: u64,
    memo: &str,
    created_at: i64,
    expiry: i64,
    network: Network,
    preimage: [u8; 32],
) -> FakeInvoice {
    let payment_hash = hex::encode(Sha256::digest(preimage));
    let invoice = FakeInvoice {
        payment_request: fake_bolt11(network, amount_msats),
        payment_hash,
        preimage_hex: hex::encode(preimage),
        amount_msats,
    };
    state.invoices.lock().expect("lock").insert(
        invoice.payment_request.clone(),
        InvoiceRecord {
            invoice: invoice.clone(),
            created_at,
            expiry,
            memo: memo.to_owned(),
            settled: false,
        },
    );
    invoice
}

struct FakeLightning {
    state: Arc<FakeState>,
}

struct FakeRouter {
    state: Arc<FakeState>,
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

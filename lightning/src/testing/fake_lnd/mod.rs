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
//!
//! Three files: this one holds the scripted state and the control surface tests use, `front` the
//! TCP front, `services` the gRPC services.
#![allow(deprecated)] // LND keeps deprecated fields (`Payment.value`, `Chain.chain`) that clients still read.

mod front;
mod services;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregates::payment::Network;
use lnd_grpc_rust::lnrpc::{self, payment::PaymentStatus};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::fake_stubs::lnrpc::lightning_server::LightningServer;
use crate::fake_stubs::routerrpc::router_server::RouterServer;
use crate::lnd::LndConfig;
use front::{run_front, FrontCommand};
use services::{FakeLightning, FakeRouter};

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

//! [`LndNode`]: the [`LightningNode`] trait over LND's gRPC API (`lnd_grpc_rust`). LND's generated
//! types stay in this file. The macaroon and TLS certificate never appear in errors or logs.

use std::fmt;
use std::path::PathBuf;

use aggregates::payment::services::{
    CreatedInvoice, LightningNode, NodeBalance, NodeError, NodeInfo, PaymentProgress,
    PaymentUpdates, SendRequest,
};
use aggregates::payment::{DecodedInvoice, Msat, Network, PaymentHash};

use async_trait::async_trait;
use lnd_grpc_rust::lnrpc::{self, payment::PaymentStatus, PaymentFailureReason};
use lnd_grpc_rust::routerrpc;

/// How to reach an LND node. `Debug` never prints the macaroon.
#[derive(Clone)]
pub struct LndConfig {
    /// `host:port` of LND's gRPC listener (default port 10009).
    pub address: String,
    /// LND's TLS certificate, PEM (the node's `tls.cert`).
    pub tls_cert_pem: Vec<u8>,
    /// The macaroon, hex encoded (e.g. `admin.macaroon`, or a baked one with offchain/invoice
    /// permissions).
    pub macaroon_hex: String,
}

impl fmt::Debug for LndConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LndConfig")
            .field("address", &self.address)
            .field(
                "tls_cert_pem",
                &format_args!("<{} bytes>", self.tls_cert_pem.len()),
            )
            .field("macaroon_hex", &"<redacted>")
            .finish()
    }
}

/// Where [`LndConfig`] comes from on the command line / in the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct LndArgs {
    /// LND gRPC address (`host:port`).
    #[arg(
        long = "lnd-address",
        env = "OA_LND_ADDRESS",
        default_value = "127.0.0.1:10009"
    )]
    pub lnd_address: String,
    /// Path to LND's `tls.cert`.
    #[arg(long = "lnd-tls-cert", env = "OA_LND_TLS_CERT_PATH")]
    pub lnd_tls_cert_path: Option<PathBuf>,
    /// Path to the macaroon file (binary, as LND writes it).
    #[arg(long = "lnd-macaroon", env = "OA_LND_MACAROON_PATH")]
    pub lnd_macaroon_path: Option<PathBuf>,
    /// The macaroon as hex, instead of a file (keep it out of shell history: prefer the env var).
    #[arg(
        long = "lnd-macaroon-hex",
        env = "OA_LND_MACAROON_HEX",
        hide_env_values = true
    )]
    pub lnd_macaroon_hex: Option<String>,
}

impl LndArgs {
    /// Reads the certificate and macaroon.
    ///
    /// # Errors
    /// When a file is missing or unreadable, or no macaroon is given. Messages name files, never
    /// their contents.
    pub fn load(&self) -> anyhow::Result<LndConfig> {
        let cert_path = self
            .lnd_tls_cert_path
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--lnd-tls-cert (OA_LND_TLS_CERT_PATH) is required"))?;
        let tls_cert_pem = std::fs::read(cert_path).map_err(|e| {
            anyhow::anyhow!("cannot read LND TLS cert {}: {e}", cert_path.display())
        })?;
        let macaroon_hex = match (&self.lnd_macaroon_hex, &self.lnd_macaroon_path) {
            (Some(hex_value), _) => hex_value.trim().to_owned(),
            (None, Some(path)) => hex::encode(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read LND macaroon {}: {e}", path.display())
            })?),
            (None, None) => {
                anyhow::bail!("an LND macaroon is required (--lnd-macaroon or OA_LND_MACAROON_HEX)")
            }
        };
        Ok(LndConfig {
            address: self.lnd_address.clone(),
            tls_cert_pem,
            macaroon_hex,
        })
    }
}

/// An LND node reached over gRPC/TLS with a macaroon.
#[derive(Clone)]
pub struct LndNode {
    client: lnd_grpc_rust::LndClient,
}

impl fmt::Debug for LndNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LndNode")
    }
}

impl LndNode {
    /// Prepares the gRPC channel. No request is made until the first call.
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when the certificate or address is unusable.
    pub async fn connect(config: &LndConfig) -> Result<Self, NodeError> {
        let cert_hex = hex::encode(&config.tls_cert_pem);
        let result = lnd_grpc_rust::connect(
            cert_hex,
            config.macaroon_hex.clone(),
            config.address.clone(),
        )
        .await
        .map_err(|e| e.to_string());
        match result {
            Ok(client) => Ok(Self { client }),
            Err(message) => Err(NodeError::Unavailable(format!(
                "cannot set up the LND channel to {}: {}",
                config.address,
                scrub(&message)
            ))),
        }
    }
}

/// Keeps error text short and free of anything that looks like a credential.
fn scrub(message: &str) -> String {
    let mut text: String = message.chars().take(300).collect();
    if text.to_ascii_lowercase().contains("macaroon") {
        text = "authentication with the node failed (macaroon rejected)".to_owned();
    }
    text
}

/// Which LND call failed: the same gRPC answer means different things per call (docs/lightning.md,
/// "What the executor knows").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A read with no effect (GetInfo, balances, DecodePayReq, AddInvoice, TrackPaymentV2).
    Read,
    /// SendPaymentV2: a failure is a refusal only when LND says so explicitly.
    Send,
}

/// LND's words for a refused macaroon or a missing permission (LND sends these as `Unknown`).
const AUTH_MARKERS: &[&str] = &[
    "macaroon",
    "permission denied",
    "verification failed",
    "unauthorized",
    "invalid auth",
];

/// The client's words for a connection that failed or broke (tonic reports them as `Unknown`,
/// e.g. `client error (Connect)`, `client error (SendRequest)`).
const TRANSPORT_MARKERS: &[&str] = &[
    "client error",
    "transport error",
    "connection",
    "connect error",
    "error trying to connect",
    "broken pipe",
    "h2 protocol error",
    "dns error",
    "timed out",
    "operation was canceled",
    "stream closed",
];

/// What LND answers (as `Unknown`) when it refuses a SendPaymentV2 before any payment exists:
/// the request does not decode, the invoice expired, or the request's parameters are invalid.
const SEND_REFUSALS: &[&str] = &[
    "invalid payment request",
    "invoice expired",
    "checksum failed",
    "amount must be specified",
    "amount must not be specified",
    "invalid bech32",
    "not a bech32",
    "unknown currency",
    "invoice not for current active network",
    "self-payments not allowed",
    "fee limit",
];

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

/// Classifies a gRPC error from LND by what it tells about the call's effect.
///
/// - `already paid` / `in transition` / `AlreadyExists`: LND knows the payment hash.
/// - `Unauthenticated`, `PermissionDenied`, or LND's macaroon messages: refused before anything ran.
/// - For [`Call::Send`]: `InvalidArgument`, `FailedPrecondition`, `OutOfRange`, `Unimplemented`,
///   `NotFound`, and `Unknown` carrying one of LND's pre-payment refusals are refusals
///   ([`NodeError::Rejected`]); everything else — `Unknown` (transport errors included),
///   `Internal`, `Unavailable`, `DeadlineExceeded`, `Cancelled`, `Aborted`, `ResourceExhausted`,
///   `DataLoss` — leaves the outcome unknown ([`NodeError::OutcomeUnknown`]).
/// - For [`Call::Read`]: transport trouble and server-side failures are
///   [`NodeError::Unavailable`]; other answers are the node's refusal of the request.
pub fn classify(status: &tonic::Status, call: Call) -> NodeError {
    use tonic::Code;
    let raw = status.message().to_ascii_lowercase();
    let code = status.code();
    let message = format!("{code:?}: {}", scrub(status.message()));
    if raw.contains("already paid") {
        return NodeError::AlreadyPaid;
    }
    if raw.contains("in transition")
        || raw.contains("already in flight")
        || code == Code::AlreadyExists
    {
        return NodeError::AlreadyInFlight;
    }
    if matches!(code, Code::Unauthenticated | Code::PermissionDenied)
        || contains_any(&raw, AUTH_MARKERS)
    {
        return NodeError::AuthRefused(message);
    }
    let transport = contains_any(&raw, TRANSPORT_MARKERS);
    match call {
        Call::Send => match code {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::NotFound => NodeError::Rejected(message),
            Code::Unknown if !transport && contains_any(&raw, SEND_REFUSALS) => {
                NodeError::Rejected(message)
            }
            _ => NodeError::OutcomeUnknown(message),
        },
        Call::Read => match code {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
            | Code::DataLoss => NodeError::Unavailable(message),
            Code::Unknown if transport => NodeError::Unavailable(message),
            _ => NodeError::Rejected(message),
        },
    }
}

fn status_error(status: tonic::Status) -> NodeError {
    classify(&status, Call::Read)
}

#[allow(deprecated)] // PaymentStatus::Unknown is deprecated in LND but may still be sent.
fn payment_progress(payment: &lnrpc::Payment) -> PaymentProgress {
    match PaymentStatus::try_from(payment.status).unwrap_or(PaymentStatus::InFlight) {
        PaymentStatus::Succeeded => {
            let settled_at_ms = payment
                .htlcs
                .iter()
                .filter(|h| h.status == lnrpc::htlc_attempt::HtlcStatus::Succeeded as i32)
                .map(|h| h.resolve_time_ns / 1_000_000)
                .find(|ms| *ms > 0);
            PaymentProgress::Succeeded {
                preimage_hex: payment.payment_preimage.to_ascii_lowercase(),
                value_msats: u64::try_from(payment.value_msat).unwrap_or(0),
                fee_msats: u64::try_from(payment.fee_msat).unwrap_or(0),
                settled_at_ms,
            }
        }
        PaymentStatus::Failed => PaymentProgress::Failed {
            reason: PaymentFailureReason::try_from(payment.failure_reason)
                .map(|r| r.as_str_name().to_owned())
                .unwrap_or_else(|_| format!("FAILURE_REASON_{}", payment.failure_reason)),
        },
        PaymentStatus::InFlight | PaymentStatus::Initiated | PaymentStatus::Unknown => {
            PaymentProgress::InFlight
        }
    }
}

struct StreamUpdates {
    stream: Option<tonic::Streaming<lnrpc::Payment>>,
    /// A TrackPaymentV2 on an unknown hash: yield `NotFound` once.
    not_found: bool,
}

#[async_trait]
impl PaymentUpdates for StreamUpdates {
    async fn next(&mut self) -> Option<Result<PaymentProgress, NodeError>> {
        if self.not_found {
            self.not_found = false;
            return Some(Ok(PaymentProgress::NotFound));
        }
        let stream = self.stream.as_mut()?;
        match stream.message().await {
            Ok(Some(payment)) => Some(Ok(payment_progress(&payment))),
            Ok(None) => {
                self.stream = None;
                None
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                self.stream = None;
                Some(Ok(PaymentProgress::NotFound))
            }
            Err(status) => {
                self.stream = None;
                Some(Err(NodeError::StreamBroken(scrub(status.message()))))
            }
        }
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[async_trait]
impl LightningNode for LndNode {
    async fn info(&self) -> Result<NodeInfo, NodeError> {
        let mut client = self.client.clone();
        let info = client
            .lightning()
            .get_info(lnrpc::GetInfoRequest::default())
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(NodeInfo {
            identity_pubkey: info.identity_pubkey,
            alias: info.alias,
            network: info
                .chains
                .first()
                .and_then(|c| Network::from_lnd(&c.network)),
            block_height: info.block_height,
            synced_to_chain: info.synced_to_chain,
        })
    }

    async fn balance(&self) -> Result<NodeBalance, NodeError> {
        let mut client = self.client.clone();
        let wallet = client
            .lightning()
            .wallet_balance(lnrpc::WalletBalanceRequest::default())
            .await
            .map_err(status_error)?
            .into_inner();
        let channels = client
            .lightning()
            .channel_balance(lnrpc::ChannelBalanceRequest::default())
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(NodeBalance {
            onchain_confirmed_sats: to_u64(wallet.confirmed_balance),
            channel_local_msats: channels.local_balance.map(|a| a.msat).unwrap_or(0),
        })
    }

    async fn decode(&self, invoice: &str) -> Result<DecodedInvoice, NodeError> {
        let mut client = self.client.clone();
        let decoded = client
            .lightning()
            .decode_pay_req(lnrpc::PayReqString {
                pay_req: invoice.trim().to_owned(),
            })
            .await
            .map_err(|status| match status_error(status) {
                NodeError::Rejected(message) => NodeError::InvalidInvoice(message),
                other => other,
            })?
            .into_inner();
        let payment_hash = PaymentHash::parse(&decoded.payment_hash).map_err(|_| {
            NodeError::InvalidInvoice("node returned a malformed payment hash".into())
        })?;
        let amount_msats = if decoded.num_msat > 0 {
            to_u64(decoded.num_msat)
        } else {
            to_u64(decoded.num_satoshis).saturating_mul(1000)
        };
        Ok(DecodedInvoice {
            payment_hash,
            destination: decoded.destination,
            amount_msats: Msat(amount_msats),
            created_at_unix: decoded.timestamp,
            // BOLT 11 default expiry is one hour.
            expiry_secs: if decoded.expiry > 0 {
                to_u64(decoded.expiry)
            } else {
                3600
            },
            description: decoded.description,
        })
    }

    async fn send(&self, request: SendRequest) -> Result<Box<dyn PaymentUpdates>, NodeError> {
        let mut client = self.client.clone();
        let stream = client
            .router()
            .send_payment_v2(routerrpc::SendPaymentRequest {
                payment_request: request.invoice,
                fee_limit_msat: i64::try_from(request.fee_limit_msats.get()).unwrap_or(i64::MAX),
                timeout_seconds: i32::try_from(request.timeout_secs).unwrap_or(60),
                no_inflight_updates: false,
                ..Default::default()
            })
            .await
            .map_err(|status| classify(&status, Call::Send))?
            .into_inner();
        Ok(Box::new(StreamUpdates {
            stream: Some(stream),
            not_found: false,
        }))
    }

    async fn track(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<Box<dyn PaymentUpdates>, NodeError> {
        let mut client = self.client.clone();
        let hash = hex::decode(payment_hash.as_str()).expect("a PaymentHash is valid hex");
        let result = client
            .router()
            .track_payment_v2(routerrpc::TrackPaymentRequest {
                payment_hash: hash,
                no_inflight_updates: false,
            })
            .await;
        match result {
            Ok(response) => Ok(Box::new(StreamUpdates {
                stream: Some(response.into_inner()),
                not_found: false,
            })),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(Box::new(StreamUpdates {
                stream: None,
                not_found: true,
            })),
            Err(status) => Err(status_error(status)),
        }
    }

    async fn add_invoice(
        &self,
        amount_msats: Msat,
        memo: &str,
        expiry_secs: u64,
        preimage: Option<[u8; 32]>,
    ) -> Result<CreatedInvoice, NodeError> {
        let mut client = self.client.clone();
        let response = client
            .lightning()
            .add_invoice(lnrpc::Invoice {
                memo: memo.to_owned(),
                value_msat: i64::try_from(amount_msats.get()).unwrap_or(i64::MAX),
                expiry: i64::try_from(expiry_secs).unwrap_or(3600),
                r_preimage: preimage.map(|p| p.to_vec()).unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let payment_hash: [u8; 32] = response
            .r_hash
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::Rejected("node returned a malformed r_hash".into()))?;
        Ok(CreatedInvoice {
            payment_hash: PaymentHash::from_bytes(&payment_hash),
            payment_request: response.payment_request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn send(code: Code, message: &str) -> NodeError {
        classify(&Status::new(code, message), Call::Send)
    }

    fn read(code: Code, message: &str) -> NodeError {
        classify(&Status::new(code, message), Call::Read)
    }

    #[test]
    fn a_send_whose_outcome_is_unknown_is_never_a_refusal() {
        for (code, message) in [
            (Code::Unknown, "client error (SendRequest)"),
            (Code::Unknown, "anything else"),
            (Code::Internal, "boom"),
            (Code::Unavailable, "transport is closing"),
            (Code::DeadlineExceeded, "deadline"),
            (Code::Cancelled, "cancelled"),
            (Code::Aborted, "aborted"),
            (Code::ResourceExhausted, "too many"),
            (Code::DataLoss, "lost"),
            // A transport error that happens to mention a refusal word is still a transport error.
            (Code::Unknown, "client error (SendRequest): invoice expired"),
        ] {
            assert!(
                matches!(send(code, message), NodeError::OutcomeUnknown(_)),
                "{code:?} {message}"
            );
        }
    }

    #[test]
    fn lnds_explicit_refusals_are_refusals() {
        assert!(matches!(
            send(Code::InvalidArgument, "invalid payment request"),
            NodeError::Rejected(_)
        ));
        assert!(matches!(
            send(Code::Unknown, "invoice expired. Valid until …"),
            NodeError::Rejected(_)
        ));
        assert_eq!(
            send(Code::AlreadyExists, "invoice is already paid"),
            NodeError::AlreadyPaid
        );
        assert_eq!(
            send(Code::AlreadyExists, "payment is in transition"),
            NodeError::AlreadyInFlight
        );
        for message in [
            "permission denied",
            "verification failed: signature mismatch after caveat verification",
            "expected 1 macaroon, got 0",
        ] {
            let error = send(Code::Unknown, message);
            assert!(matches!(error, NodeError::AuthRefused(_)), "{message}");
            assert!(matches!(
                read(Code::Unknown, message),
                NodeError::AuthRefused(_)
            ));
        }
    }

    #[test]
    fn reads_tell_node_trouble_from_a_refused_request() {
        assert!(matches!(
            read(Code::Unknown, "client error (Connect)"),
            NodeError::Unavailable(_)
        ));
        assert!(matches!(
            read(Code::Unavailable, "connection refused"),
            NodeError::Unavailable(_)
        ));
        assert!(matches!(
            read(Code::Unknown, "invalid index of 1: checksum failed"),
            NodeError::Rejected(_)
        ));
    }

    #[test]
    fn macaroon_text_never_survives_in_messages() {
        let error = read(Code::Unknown, "cannot get macaroon: 0201abcdef");
        assert!(!error.to_string().contains("0201abcdef"));
    }
}

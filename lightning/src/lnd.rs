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

fn status_error(status: tonic::Status) -> NodeError {
    use tonic::Code;
    let message = scrub(status.message());
    let lower = message.to_ascii_lowercase();
    if lower.contains("already paid") {
        return NodeError::AlreadyPaid;
    }
    if lower.contains("in transition") || lower.contains("already in flight") {
        return NodeError::AlreadyInFlight;
    }
    match status.code() {
        Code::Unavailable
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::DeadlineExceeded
        | Code::Cancelled => NodeError::Unavailable(format!("{:?}: {message}", status.code())),
        _ => NodeError::Rejected(format!("{:?}: {message}", status.code())),
    }
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
            .map_err(status_error)?
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

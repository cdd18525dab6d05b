//! Command-line surface for the composition root: `lightning l402 compile|reconcile`
//! ([`L402Command`] + [`run_l402`]) and the `serve` options ([`LightningServeArgs`] + [`start`]) that
//! start the wallet executor (`--wallet-executor`) and the L402 gateway (`--l402-gateway`) on their
//! own listeners. Secrets come from files or environment variables and are never printed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aggregates::payment::services::LightningNode;
use aggregates::payment::{Msat, WalletId};
use clap::{Args, Subcommand};
use engine::Engine;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::executor::{router as executor_router, ExecutorConfig, FeeLimit, PaymentExecutor};
use crate::l402::compile::compile;
use crate::l402::control_plane::{ApiControlPlane, ControlPlane, FileControlPlane};
use crate::l402::gateway::{router as gateway_router, GatewayConfig, L402Gateway};
use crate::l402::reconcile::{reconcile_once, ReconcileOptions};
use crate::lnd::{LndArgs, LndNode};

/// `lightning l402 …`
#[derive(Debug, Subcommand)]
pub enum L402Command {
    /// Compile paywall intents into the gateway's route config (YAML + configHash).
    Compile(CompileArgs),
    /// Compile, deploy to the gateway, verify (health, 402 challenge, paid proxy), roll back on failure.
    Reconcile(ReconcileArgs),
}

/// Where paywall intents come from (and where records go).
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// A JSON file with `{ "paywalls": [...] }` (or a bare array) instead of the control-plane API.
    #[arg(long, conflicts_with = "api_base_url")]
    pub input: Option<PathBuf>,
    /// With `--input`: append deployment records and events to this JSON-lines file.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// The control plane's base URL (`{base}/api/internal/lightning-ops/control-plane/...`).
    #[arg(long, env = "OA_LIGHTNING_OPS_API_BASE_URL")]
    pub api_base_url: Option<String>,
    /// The control plane's shared secret.
    #[arg(long, env = "OA_LIGHTNING_OPS_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
}

impl ControlPlaneArgs {
    fn build(&self) -> anyhow::Result<Box<dyn ControlPlane>> {
        match (&self.input, &self.api_base_url) {
            (Some(input), _) => Ok(Box::new(FileControlPlane::new(
                input.clone(),
                self.records.clone(),
            ))),
            (None, Some(base)) => Ok(Box::new(ApiControlPlane::new(
                base,
                self.api_secret.as_deref().unwrap_or(""),
            )?)),
            (None, None) => anyhow::bail!(
                "give --input <paywalls.json> or --api-base-url (OA_LIGHTNING_OPS_API_BASE_URL)"
            ),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub source: ControlPlaneArgs,
    /// Write the YAML here (only when the compile is valid).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub source: ControlPlaneArgs,
    /// The gateway's base URL.
    #[arg(
        long,
        env = "OA_LIGHTNING_OPS_GATEWAY_BASE_URL",
        default_value = "http://127.0.0.1:8789"
    )]
    pub gateway_url: String,
    /// Bearer token for the gateway's `/ops/*`.
    #[arg(
        long,
        env = "OA_LIGHTNING_OPS_GATEWAY_OPS_TOKEN",
        hide_env_values = true
    )]
    pub ops_token: Option<String>,
    #[arg(
        long,
        env = "OA_LIGHTNING_OPS_GATEWAY_HEALTH_PATH",
        default_value = "/healthz"
    )]
    pub health_path: String,
    /// URL for the challenge and proxy probes (default: derived from the first route).
    #[arg(long, env = "OA_LIGHTNING_OPS_PROBE_URL")]
    pub probe_url: Option<String>,
    /// `Authorization` value for the proxy probe (default: the gateway's smoke credential).
    #[arg(
        long,
        env = "OA_LIGHTNING_OPS_PROXY_AUTHORIZATION_HEADER",
        hide_env_values = true
    )]
    pub proxy_authorization: Option<String>,
    /// Request id for correlation (default: `reconcile:<unix ms>`).
    #[arg(long)]
    pub request_id: Option<String>,
    #[arg(long, default_value_t = 15)]
    pub timeout_secs: u64,
    #[arg(long)]
    pub json: bool,
}

/// Runs `lightning l402 compile|reconcile`. Prints the summary; fails (non-zero exit) when the compile
/// is invalid or the reconcile did not apply.
///
/// # Errors
/// Invalid input, an unreachable control plane, or an unsuccessful outcome.
pub async fn run_l402(command: L402Command) -> anyhow::Result<()> {
    match command {
        L402Command::Compile(args) => {
            let control = args.source.build()?;
            let artifact = compile(&control.list_paywalls().await?);
            if artifact.valid {
                if let Some(path) = &args.output {
                    std::fs::write(path, &artifact.aperture_yaml)
                        .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
                }
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": artifact.valid, "configHash": artifact.config_hash,
                        "ruleCount": artifact.rule_count, "valid": artifact.valid,
                        "diagnosticsCount": artifact.diagnostics.len(), "diagnostics": artifact.diagnostics,
                    })
                );
            } else {
                println!("configHash={}", artifact.config_hash);
                println!("ruleCount={}", artifact.rule_count);
                println!("valid={}", artifact.valid);
                for d in &artifact.diagnostics {
                    println!(
                        "diagnostic={} paywall={} route={} message={}",
                        d.code,
                        d.paywall_id.as_deref().unwrap_or("-"),
                        d.route_id.as_deref().unwrap_or("-"),
                        d.message
                    );
                }
                if artifact.valid && args.output.is_none() {
                    print!("{}", artifact.aperture_yaml);
                }
            }
            anyhow::ensure!(
                artifact.valid,
                "compile failed with {} diagnostic(s)",
                artifact.diagnostics.len()
            );
            Ok(())
        }
        L402Command::Reconcile(args) => {
            let control = args.source.build()?;
            let options = ReconcileOptions {
                request_id: args.request_id.clone().unwrap_or_else(|| {
                    format!("reconcile:{}", chrono::Utc::now().timestamp_millis())
                }),
                gateway_url: args.gateway_url.clone(),
                ops_token: args.ops_token.clone(),
                health_path: args.health_path.clone(),
                probe_url: args.probe_url.clone(),
                proxy_authorization: args.proxy_authorization.clone(),
                timeout: Duration::from_secs(args.timeout_secs),
            };
            let summary = reconcile_once(control.as_ref(), &options).await?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("requestId={}", summary.request_id);
                println!("configHash={}", summary.config_hash);
                println!("deploymentStatus={}", summary.deployment_status);
                println!("deploymentId={}", summary.deployment_id);
                println!("changed={}", summary.changed);
                println!("healthOk={}", summary.health_ok);
                println!("challengeOk={}", summary.challenge_ok);
                println!("proxyOk={}", summary.proxy_ok);
                if let Some(code) = summary.failure_code {
                    println!("failureCode={}", code.as_str());
                }
            }
            anyhow::ensure!(summary.ok, "reconcile ended {}", summary.deployment_status);
            Ok(())
        }
    }
}

/// Options of `serve` for the Lightning lane. Flatten into the serve command.
#[derive(Debug, Clone, Args)]
pub struct LightningServeArgs {
    /// Serve the wallet executor API (`/healthz`, `/status`, `/pay-bolt11`) on its own listener.
    #[arg(long)]
    pub wallet_executor: bool,
    /// Serve the L402 reverse-proxy gateway on its own listener.
    #[arg(long)]
    pub l402_gateway: bool,
    #[command(flatten)]
    pub lnd: LndArgs,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    #[arg(
        long = "wallet-executor-listen",
        env = "OA_LIGHTNING_WALLET_EXECUTOR_LISTEN",
        default_value = "127.0.0.1:8788"
    )]
    pub wallet_listen: SocketAddr,
    #[arg(
        long = "wallet-id",
        env = "OA_LIGHTNING_WALLET_ID",
        default_value = "openagents-ep212"
    )]
    pub wallet_id: String,
    /// Bearer token callers must present.
    #[arg(
        long = "wallet-executor-token",
        env = "OA_LIGHTNING_WALLET_EXECUTOR_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub wallet_auth_token: Option<String>,
    #[arg(
        long = "wallet-executor-token-version",
        env = "OA_LIGHTNING_WALLET_EXECUTOR_AUTH_TOKEN_VERSION",
        default_value_t = 1
    )]
    pub wallet_auth_token_version: u32,
    /// Run without a bearer token (local development only).
    #[arg(long = "wallet-executor-insecure-no-auth")]
    pub wallet_insecure_no_auth: bool,
    /// Comma-separated hosts that may be paid (empty: any).
    #[arg(
        long = "wallet-allowed-hosts",
        env = "OA_LIGHTNING_WALLET_ALLOWED_HOSTS",
        default_value = "sats4ai.com,l402.openagents.com"
    )]
    pub wallet_allowed_hosts: String,
    #[arg(
        long = "wallet-request-cap-msats",
        env = "OA_LIGHTNING_WALLET_REQUEST_CAP_MSATS",
        default_value_t = 200_000
    )]
    pub wallet_request_cap_msats: u64,
    #[arg(
        long = "wallet-window-cap-msats",
        env = "OA_LIGHTNING_WALLET_WINDOW_CAP_MSATS",
        default_value_t = 1_000_000
    )]
    pub wallet_window_cap_msats: u64,
    #[arg(long = "wallet-window-ms", env = "OA_LIGHTNING_WALLET_WINDOW_MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub wallet_window_ms: u64,
    #[arg(
        long = "wallet-run-cap-msats",
        env = "OA_LIGHTNING_WALLET_RUN_CAP_MSATS"
    )]
    pub wallet_run_cap_msats: Option<u64>,
    #[arg(
        long = "wallet-owner-cap-msats",
        env = "OA_LIGHTNING_WALLET_OWNER_CAP_MSATS"
    )]
    pub wallet_owner_cap_msats: Option<u64>,
    #[arg(
        long = "wallet-fee-limit-msats",
        env = "OA_LIGHTNING_WALLET_FEE_LIMIT_MSATS",
        default_value_t = 10_000
    )]
    pub wallet_fee_limit_msats: u64,
    #[arg(
        long = "wallet-fee-limit-ppm",
        env = "OA_LIGHTNING_WALLET_FEE_LIMIT_PPM",
        default_value_t = 10_000
    )]
    pub wallet_fee_limit_ppm: u64,
    /// How long `/pay-bolt11` waits for an outcome before `504 payment_pending`.
    #[arg(
        long = "wallet-payment-timeout-secs",
        env = "OA_LIGHTNING_PAYMENT_TIMEOUT_SECS",
        default_value_t = 45
    )]
    pub wallet_payment_timeout_secs: u64,
    /// SendPaymentV2 `timeout_seconds` (route search).
    #[arg(
        long = "wallet-send-timeout-secs",
        env = "OA_LIGHTNING_SEND_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub wallet_send_timeout_secs: u32,
    /// How long after an attempt's last step TrackPaymentV2's `NotFound` means "never sent".
    #[arg(
        long = "wallet-not-found-grace-ms",
        env = "OA_LIGHTNING_NOT_FOUND_GRACE_MS",
        default_value_t = 10_000
    )]
    pub wallet_not_found_grace_ms: u64,
    /// The longest wait for GetInfo / DecodePayReq before the node counts as unreachable.
    #[arg(
        long = "wallet-node-call-timeout-secs",
        env = "OA_LIGHTNING_NODE_CALL_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub wallet_node_call_timeout_secs: u64,
    /// The wallet lease's TTL: one executor per wallet; a peer takes over a dead one after it.
    #[arg(
        long = "wallet-lease-ttl-secs",
        env = "OA_LIGHTNING_WALLET_LEASE_TTL_SECS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(3..=600)
    )]
    pub wallet_lease_ttl_secs: u64,
}

impl ExecutorArgs {
    /// # Errors
    /// An invalid wallet id, or no token without `--wallet-executor-insecure-no-auth`.
    pub fn config(&self) -> anyhow::Result<ExecutorConfig> {
        let wallet_id = WalletId::parse(&self.wallet_id)?;
        let mut config = ExecutorConfig::new(wallet_id);
        config.auth_token = self
            .wallet_auth_token
            .clone()
            .filter(|t| !t.trim().is_empty());
        anyhow::ensure!(
            config.auth_token.is_some() || self.wallet_insecure_no_auth,
            "the wallet executor needs a bearer token (OA_LIGHTNING_WALLET_EXECUTOR_AUTH_TOKEN), \
             or --wallet-executor-insecure-no-auth for local development"
        );
        config.auth_token_version = self.wallet_auth_token_version;
        config.policy.allowed_hosts = self
            .wallet_allowed_hosts
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect::<BTreeSet<_>>();
        config.policy.request_cap = Msat(self.wallet_request_cap_msats);
        config.policy.caps.window_cap = Msat(self.wallet_window_cap_msats);
        config.policy.caps.window_ms = self.wallet_window_ms;
        config.policy.caps.run_cap = self.wallet_run_cap_msats.map(Msat);
        config.policy.caps.owner_window_cap = self.wallet_owner_cap_msats.map(Msat);
        config.fee_limit = FeeLimit {
            fixed_msats: self.wallet_fee_limit_msats,
            ppm: self.wallet_fee_limit_ppm,
        };
        config.response_wait = Duration::from_secs(self.wallet_payment_timeout_secs.max(1));
        config.send_timeout_secs = self.wallet_send_timeout_secs.max(1);
        config.not_found_grace = Duration::from_millis(self.wallet_not_found_grace_ms);
        config.node_call_timeout = Duration::from_secs(self.wallet_node_call_timeout_secs.max(1));
        config.lease_ttl = Duration::from_secs(self.wallet_lease_ttl_secs);
        Ok(config)
    }
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    #[arg(
        long = "l402-gateway-listen",
        env = "OA_L402_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8789"
    )]
    pub l402_listen: SocketAddr,
    /// Bearer token for `/ops/*`.
    #[arg(
        long = "l402-ops-token",
        env = "OA_L402_GATEWAY_OPS_TOKEN",
        hide_env_values = true
    )]
    pub l402_ops_token: Option<String>,
    /// Leave `/ops/*` unauthenticated (local development only).
    #[arg(long = "l402-insecure-open-ops")]
    pub l402_insecure_open_ops: bool,
    /// File holding the macaroon root key (created with a random key if missing).
    #[arg(
        long = "l402-root-key-file",
        env = "OA_L402_ROOT_KEY_FILE",
        default_value = "data/l402-root-key"
    )]
    pub l402_root_key_file: PathBuf,
    /// Where the gateway keeps its deployments.
    #[arg(
        long = "l402-state-file",
        env = "OA_L402_STATE_FILE",
        default_value = "data/l402-gateway.json"
    )]
    pub l402_state_file: PathBuf,
    #[arg(
        long = "l402-invoice-expiry-secs",
        env = "OA_L402_INVOICE_EXPIRY_SECS",
        default_value_t = 3600
    )]
    pub l402_invoice_expiry_secs: u64,
    #[arg(
        long = "l402-location",
        env = "OA_L402_LOCATION",
        default_value = "openagents"
    )]
    pub l402_location: String,
}

impl GatewayArgs {
    /// # Errors
    /// No ops token without `--l402-insecure-open-ops`, or an unusable root key file.
    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        let ops_token = self.l402_ops_token.clone().filter(|t| !t.trim().is_empty());
        anyhow::ensure!(
            ops_token.is_some() || self.l402_insecure_open_ops,
            "the L402 gateway needs an ops token (OA_L402_GATEWAY_OPS_TOKEN), or --l402-insecure-open-ops"
        );
        let root_key = if self.l402_root_key_file.exists() {
            std::fs::read(&self.l402_root_key_file)
                .map_err(|e| anyhow::anyhow!("read {}: {e}", self.l402_root_key_file.display()))?
        } else {
            use rand::RngCore;
            let mut key = vec![0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            if let Some(dir) = self
                .l402_root_key_file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&self.l402_root_key_file, &key)
                .map_err(|e| anyhow::anyhow!("write {}: {e}", self.l402_root_key_file.display()))?;
            key
        };
        anyhow::ensure!(
            root_key.len() >= 32,
            "the L402 root key must be at least 32 bytes"
        );
        if let Some(dir) = self
            .l402_state_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        Ok(GatewayConfig {
            ops_token,
            root_key,
            location: self.l402_location.clone(),
            invoice_expiry_secs: self.l402_invoice_expiry_secs,
            state_file: Some(self.l402_state_file.clone()),
        })
    }
}

/// What [`start`] started.
pub struct LightningServices {
    pub executor: Option<Arc<PaymentExecutor>>,
    pub gateway: Option<Arc<L402Gateway>>,
    /// The bound addresses (executor, gateway), for logs.
    pub executor_addr: Option<SocketAddr>,
    pub gateway_addr: Option<SocketAddr>,
    servers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl LightningServices {
    /// Waits for the listeners to stop (after the shutdown token fired) and the executor's payment
    /// drivers to end.
    ///
    /// # Errors
    /// When a listener failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        for server in self.servers {
            server.await??;
        }
        if let Some(executor) = &self.executor {
            executor.wait_stopped().await;
        }
        Ok(())
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(anyhow::Error::from)
}

/// Starts what `--wallet-executor` / `--l402-gateway` ask for, each on its own listener, until
/// `shutdown` is cancelled. Does nothing when neither flag is set.
///
/// # Errors
/// Bad configuration, an unreadable LND certificate or macaroon, or a listener that cannot bind.
pub async fn start(
    args: LightningServeArgs,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) -> anyhow::Result<LightningServices> {
    let mut services = LightningServices {
        executor: None,
        gateway: None,
        executor_addr: None,
        gateway_addr: None,
        servers: Vec::new(),
    };
    if !args.wallet_executor && !args.l402_gateway {
        return Ok(services);
    }
    let lnd = args.lnd.load()?;
    let node: Arc<dyn LightningNode> = Arc::new(LndNode::connect(&lnd).await?);
    if args.wallet_executor {
        let config = args.executor.config()?;
        let listener = tokio::net::TcpListener::bind(args.executor.wallet_listen).await?;
        services.executor_addr = Some(listener.local_addr()?);
        let executor =
            PaymentExecutor::start(engine.clone(), node.clone(), config, shutdown.clone());
        services.servers.push(tokio::spawn(serve(
            listener,
            executor_router(executor.clone()),
            shutdown.clone(),
        )));
        tracing::info!(addr = ?services.executor_addr, "wallet executor listening");
        services.executor = Some(executor);
    }
    if args.l402_gateway {
        let config = args.gateway.config()?;
        let gateway = L402Gateway::new(node, config)?;
        let listener = tokio::net::TcpListener::bind(args.gateway.l402_listen).await?;
        services.gateway_addr = Some(listener.local_addr()?);
        services.servers.push(tokio::spawn(serve(
            listener,
            gateway_router(gateway.clone()),
            shutdown.clone(),
        )));
        tracing::info!(addr = ?services.gateway_addr, "L402 gateway listening");
        services.gateway = Some(gateway);
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        lightning: LightningServeArgs,
    }

    #[derive(Parser)]
    struct Ops {
        #[command(subcommand)]
        l402: L402Command,
    }

    #[test]
    fn serve_flags_parse_with_the_original_defaults() {
        let serve =
            Serve::parse_from(["serve", "--wallet-executor", "--wallet-executor-token", "t"]);
        assert!(serve.lightning.wallet_executor);
        assert!(!serve.lightning.l402_gateway);
        let config = serve.lightning.executor.config().unwrap();
        assert_eq!(config.policy.request_cap, Msat(200_000));
        assert_eq!(config.policy.caps.window_cap, Msat(1_000_000));
        assert_eq!(config.policy.caps.window_ms, 300_000);
        assert_eq!(config.policy.allowed_hosts.len(), 2);
        assert!(!format!("{config:?}").contains("\"t\""));
        let no_token = Serve::parse_from(["serve", "--wallet-executor"]);
        assert!(no_token.lightning.executor.config().is_err());
    }

    #[test]
    fn l402_subcommands_parse() {
        let ops = Ops::parse_from(["x", "compile", "--input", "p.json", "--json"]);
        assert!(matches!(ops.l402, L402Command::Compile(ref a) if a.json));
        let ops = Ops::parse_from([
            "x",
            "reconcile",
            "--input",
            "p.json",
            "--gateway-url",
            "http://g",
        ]);
        assert!(matches!(ops.l402, L402Command::Reconcile(ref a) if a.gateway_url == "http://g"));
    }
}

//! `openagents-runtime serve`: build the configuration, open (and migrate) the journal, compose
//! the server and run until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::cli::DatabaseArgs;
use crate::config::{resolve_secret, HttpConfig, RuntimeConfig, SecretSource, WorkerConfig};
use crate::{App, Server};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "OA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// PostgreSQL URL of a hot standby of --database-url (streaming replication). Khala's
    /// replay and live tail and HTTP hydration read it instead of the primary; commands and
    /// every write stay on the primary. Sessions never deliver past what the standby has
    /// replayed (docs/adr/0125-read-replicas.md). PostgreSQL journals only.
    #[arg(long, env = "READ_DATABASE_URL")]
    pub read_database_url: Option<String>,

    /// Connection pool size of --read-database-url.
    #[arg(long, env = "OA_READ_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub read_db_max_connections: u32,

    /// Shared secret for X-OA-RUNTIME-SIGNATURE tokens (at least 16 bytes). Required with
    /// PostgreSQL; with the embedded journal a random one is generated once in --data-dir.
    #[arg(long, env = "OA_RUNTIME_SIGNATURE_SECRET", hide_env_values = true)]
    pub signature_secret: Option<String>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "OA_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub body_limit_bytes: usize,

    /// Largest `metadata` object a run or worker may carry, in bytes of its JSON (400
    /// `metadata_too_large` beyond it). Summaries carry it, so it bounds every summary document.
    #[arg(long, env = "OA_METADATA_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub metadata_limit_bytes: usize,

    /// How many bytes the in-memory aggregate cache may hold (estimated per aggregate); least
    /// recently used aggregates are evicted beyond it and reloaded from the journal when needed.
    #[arg(long, env = "OA_AGGREGATE_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub aggregate_cache_bytes: usize,

    /// How long an Idempotency-Key record is kept, in seconds (a retry after that runs again).
    #[arg(long, env = "OA_IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 3600)]
    pub idempotency_ttl_secs: u64,

    /// How long SSE streams wait for new events when the request has no tail_ms.
    #[arg(long, env = "OA_STREAM_TAIL_MS", default_value_t = 30_000)]
    pub stream_tail_ms: u64,

    /// Largest tail_ms a client may ask for.
    #[arg(long, env = "OA_STREAM_TAIL_MAX_MS", default_value_t = 900_000)]
    pub stream_tail_max_ms: u64,

    /// How many events back an SSE stream may resume; older cursors get 410 stale_cursor.
    /// Unset: the whole history.
    #[arg(long, env = "OA_STREAM_REPLAY_WINDOW")]
    pub stream_replay_window: Option<u64>,

    /// Lease given to workers that do not ask for one, in milliseconds.
    #[arg(long, env = "OA_WORKER_LEASE_TTL_MS", default_value_t = aggregates::worker::DEFAULT_LEASE_TTL_MS)]
    pub worker_lease_ttl_ms: u64,

    /// How often the lease sweeper looks for expired worker leases, in milliseconds.
    #[arg(long, env = "OA_LEASE_SWEEP_INTERVAL_MS", default_value_t = 1_000)]
    pub lease_sweep_interval_ms: u64,

    /// How long shutdown waits for in-flight requests, streams and tasks, in seconds.
    #[arg(long, env = "OA_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// The key that signs run receipts and audit bundles (optional).
    #[command(flatten)]
    pub signing: crate::audit::SigningArgs,

    /// The audit log: the key that signs checkpoints and how often they are taken.
    #[command(flatten)]
    pub audit_log: crate::audit::log::AuditLogArgs,

    /// The Lightning lane: wallet executor and L402 gateway, each on its own listener.
    #[command(flatten)]
    pub lightning: lightning::cli::LightningServeArgs,

    /// Khala, the sync gateway (sync-token keys, topic policies, limits).
    #[command(flatten)]
    pub sync: sync_gateway::GatewayArgs,

    /// The projectors that build read models and the sync stream.
    #[command(flatten)]
    pub projectors: crate::sync::ProjectorArgs,
}

impl ServeArgs {
    /// The runtime configuration these arguments describe.
    ///
    /// # Errors
    /// When the signing secret is missing (PostgreSQL) or unusable, or a read replica is given
    /// for the embedded journal.
    pub fn config(&self) -> anyhow::Result<(RuntimeConfig, SecretSource)> {
        let (secret, source) = resolve_secret(
            self.signature_secret.as_deref(),
            &self.database.data_dir,
            self.database.embedded(),
        )?;
        let mut config = RuntimeConfig::new(
            self.database.config(),
            self.database.data_dir.clone(),
            secret,
        );
        config.read_database = crate::config::ReadDatabaseConfig::from_parts(
            self.read_database_url.as_deref(),
            &config.database,
            self.read_db_max_connections,
        )?;
        config.listen = self.listen;
        config.http = HttpConfig {
            body_limit_bytes: self.body_limit_bytes,
            metadata_limit_bytes: self.metadata_limit_bytes,
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs.max(60)),
            stream_tail_default: Duration::from_millis(self.stream_tail_ms.max(1)),
            stream_tail_max: Duration::from_millis(self.stream_tail_max_ms.max(1)),
            stream_replay_window: self.stream_replay_window,
        };
        config.engine.cache_bytes = self.aggregate_cache_bytes;
        config.workers = WorkerConfig {
            default_lease_ttl_ms: self.worker_lease_ttl_ms,
            sweep_interval: Duration::from_millis(self.lease_sweep_interval_ms.max(10)),
        };
        config.shutdown_grace = Duration::from_secs(self.shutdown_grace_secs);
        Ok((config, source))
    }
}

/// Serves until SIGINT/SIGTERM.
///
/// # Errors
/// When start-up fails (database, secret, bind) or a component fails while running.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, source) = args.config()?;
    tracing::info!(
        journal = %config.database.describe(),
        read_replica = config.read_database.as_ref().map(|r| r.describe()),
        version = crate::VERSION,
        "starting openagents-runtime"
    );
    let signer = args.signing.signer()?;
    let (audit_key, audit_key_source) = args
        .audit_log
        .key(&args.database.data_dir, args.database.embedded())?;
    let audit_public_key = audit_key.public_key_hex();
    let app = App::open(config).await?;
    let server = Server::bind(app.clone()).await?;
    let server =
        crate::audit::http::with_artifacts_audited(server, &app, signer, Some(audit_key.clone()));
    let server = crate::audit::log::with_audit_log(
        server,
        &app,
        audit_key,
        args.audit_log.maintainer_config(),
    );
    let server = with_lightning(server, &app, args.lightning.clone()).await?;
    let (settings, sync_key) = crate::sync::settings_from_args(&app, &args.sync, &args.projectors)?;
    let (server, lane) = crate::sync::with_sync(server, &app, settings);
    let (server, console) = crate::console::with_console(server, &app, &lane);
    let addr = server.local_addr();
    crate::server::cancel_on_signals(app.shutdown_token().clone());
    announce(addr, &args, &source, &sync_key);
    crate::audit::log::announce(&audit_public_key, &audit_key_source);
    announce_console(addr, &app, &console, &sync_key);
    server.run_until_stopped().await
}

/// The wallet executor and the L402 gateway, when their flags ask for them.
async fn with_lightning(
    server: Server,
    app: &App,
    args: lightning::cli::LightningServeArgs,
) -> anyhow::Result<Server> {
    if !args.wallet_executor && !args.l402_gateway {
        return Ok(server);
    }
    let services =
        lightning::cli::start(args, app.engine().clone(), app.shutdown_token().clone()).await?;
    announce_lightning(services.executor_addr, services.gateway_addr);
    // The listeners run on their own tasks; this one ends when they do (after shutdown), so a
    // listener that fails early stops the process like any other component.
    Ok(server.task("lightning", move |_shutdown| services.wait()))
}

fn announce_lightning(executor: Option<SocketAddr>, gateway: Option<SocketAddr>) {
    let mut out = std::io::stdout().lock();
    if let Some(addr) = executor {
        let _ = writeln!(out, "wallet executor listening on http://{addr}");
    }
    if let Some(addr) = gateway {
        let _ = writeln!(out, "L402 gateway listening on http://{addr}");
    }
    let _ = out.flush();
}

/// Prints where the API listens (one stable line that scripts and tests parse) and, with the dev
/// secret, how to mint a token.
fn announce(
    addr: SocketAddr,
    args: &ServeArgs,
    source: &SecretSource,
    sync_key: &crate::sync::SyncKeySource,
) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "openagents-runtime listening on http://{addr}");
    if let SecretSource::DevFile { path, created } = source {
        let _ = writeln!(
            out,
            "internal signing secret: {} ({}); mint a token with:\n  openagents-runtime token internal --data-dir {} --user-id 1",
            path.display(),
            if *created { "generated now" } else { "existing" },
            args.database.data_dir.display(),
        );
    }
    let _ = writeln!(out, "khala sync socket: ws://{addr}/sync/socket/websocket");
    match sync_key {
        crate::sync::SyncKeySource::DevFile { path, created } => {
            let _ = writeln!(
                out,
                "sync-token key: {} ({}); mint a sync token with:\n  openagents-runtime token mint --data-dir {} --subject user:1 --scopes runtime.run_summaries",
                path.display(),
                if *created { "generated now" } else { "existing" },
                args.database.data_dir.display(),
            );
        }
        crate::sync::SyncKeySource::Missing => {
            let _ = writeln!(
                out,
                "no sync-token key (OA_SYNC_JWT_KEY): Khala refuses every client"
            );
        }
        crate::sync::SyncKeySource::Configured => {}
    }
    let _ = out.flush();
}

/// Prints the console's address: on the embedded journal with a sync-token key, with a one-time
/// login code in the URL fragment (never sent to a server, so never in any log); otherwise the
/// console asks for a pasted sync token.
fn announce_console(
    addr: SocketAddr,
    app: &App,
    console: &crate::console::Console,
    sync_key: &crate::sync::SyncKeySource,
) {
    let embedded = matches!(app.database(), engine::Database::Sqlite { .. });
    let can_mint = !matches!(sync_key, crate::sync::SyncKeySource::Missing);
    let mut out = std::io::stdout().lock();
    if embedded && can_mint {
        let code = console.issue_login_code();
        let _ = writeln!(
            out,
            "console (one-time login, valid 10 minutes): http://{addr}/console#code={code}"
        );
    } else {
        let _ = writeln!(out, "console: http://{addr}/console (paste a sync token)");
    }
    let _ = out.flush();
}

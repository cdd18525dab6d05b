//! The sync lane of one `serve` process: the projector runners (one per read model, exactly one
//! active across all processes on a database), the stream-head notification relay, and Khala,
//! the WebSocket gateway reading the projectors' store.
//!
//! With `--read-database-url`, Khala's stream reads and hydration go to the replica (the
//! projectors, the relay's LISTEN and every write stay on the primary).
//!
//! [`with_sync`] adds all of it to a [`Server`]: the socket and HTTP hydration as public routes
//! (authorised by sync tokens), session revocation and token minting behind internal signature
//! auth, and the runners and relay as tasks.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use projectors::runner::{all_projectors, all_specs, ProjectorContext, RunnerConfig};
use projectors::{SyncNotifier, SyncStore};
use sync_gateway::auth::{Revocations, Verifier};
use sync_gateway::config::parse_duration;
use sync_gateway::source::StoreSource;
use sync_gateway::{Gateway, GatewayArgs};

use crate::{App, Server};

/// File in the data directory holding the generated dev sync-token key (embedded journal only).
pub const DEV_SYNC_KEY_FILE: &str = "sync-jwt.key";
/// The `kid` of the generated dev key.
pub const DEV_SYNC_KID: &str = "dev";

/// Projector flags of `serve` (each also an environment variable).
#[derive(Clone, Debug, Args)]
pub struct ProjectorArgs {
    /// Journal events each projector folds per transaction.
    #[arg(
        long = "projector-batch-size",
        env = "OA_PROJECTOR_BATCH_SIZE",
        default_value_t = 1_000
    )]
    pub batch_size: usize,
    /// Fallback poll of the projectors when no commit notice arrives, e.g. 500ms.
    #[arg(long = "projector-poll", env = "OA_PROJECTOR_POLL", default_value = "500ms", value_parser = parse_duration)]
    pub poll: Duration,
    /// Projector lease TTL: a peer takes a dead process's projectors over after this, e.g. 5s.
    #[arg(long = "projector-lease-ttl", env = "OA_PROJECTOR_LEASE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How often the retention pruner runs (retention per topic: --sync-topic-policies).
    #[arg(long = "sync-prune-interval", env = "OA_SYNC_PRUNE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub prune_interval: Duration,
}

impl ProjectorArgs {
    /// The runner configuration, with the topics' retention windows.
    pub fn runner_config(&self, retention: HashMap<String, Duration>) -> RunnerConfig {
        RunnerConfig {
            batch_size: self.batch_size.max(1),
            poll_interval: self.poll.max(Duration::from_millis(1)),
            lease_ttl: self.lease_ttl.max(Duration::from_millis(300)),
            retention,
            prune_interval: self.prune_interval.max(Duration::from_millis(100)),
            ..RunnerConfig::default()
        }
    }
}

/// Where the sync-token key came from.
pub enum SyncKeySource {
    Configured,
    /// Generated (or read) in the data directory for the embedded journal.
    DevFile {
        path: PathBuf,
        created: bool,
    },
    /// None: every socket and hydration request is refused until one is configured.
    Missing,
}

/// Reads the dev sync key in `data_dir`, creating it if `create`.
///
/// # Errors
/// An unreadable or unwritable file.
pub fn dev_sync_key(data_dir: &Path, create: bool) -> anyhow::Result<Option<(String, bool)>> {
    let path = data_dir.join(DEV_SYNC_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((text.trim().to_owned(), false))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("create data directory {}", data_dir.display()))?;
            let secret: [u8; 32] = rand::random();
            let entry = format!("{DEV_SYNC_KID}={}", hex::encode(secret));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(&path) {
                Ok(mut file) => {
                    file.write_all(entry.as_bytes())
                        .with_context(|| format!("write {}", path.display()))?;
                    Ok(Some((entry, true)))
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Some((
                    std::fs::read_to_string(&path)?.trim().to_owned(),
                    false,
                ))),
                Err(e) => Err(e).with_context(|| format!("create {}", path.display())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// The handles of a running sync lane (for tests and the announcement).
#[derive(Clone)]
pub struct SyncLane {
    pub store: SyncStore,
    pub notifier: Arc<SyncNotifier>,
    pub gateway: Gateway,
    pub context: Arc<ProjectorContext>,
}

/// Everything the sync lane needs to start.
pub struct SyncSettings {
    pub auth: sync_gateway::auth::AuthConfig,
    pub gateway: sync_gateway::GatewayConfig,
    pub runner: RunnerConfig,
}

/// The settings `serve`'s flags describe: on the embedded journal without a configured key, a
/// dev key generated in the data directory.
///
/// # Errors
/// Malformed key configuration, or an unusable data directory.
pub fn settings_from_args(
    app: &App,
    gateway_args: &GatewayArgs,
    projector_args: &ProjectorArgs,
) -> anyhow::Result<(SyncSettings, SyncKeySource)> {
    let mut gateway_args = gateway_args.clone();
    let embedded = matches!(app.database(), engine::Database::Sqlite { .. });
    let configured =
        gateway_args.auth.jwt_key.is_some() || gateway_args.auth.jwt_signing_pem.is_some();
    let key_source = if configured {
        SyncKeySource::Configured
    } else if embedded {
        match dev_sync_key(&app.config().data_dir, true)? {
            Some((entry, created)) => {
                gateway_args.auth.jwt_key = Some(entry);
                SyncKeySource::DevFile {
                    path: app.config().data_dir.join(DEV_SYNC_KEY_FILE),
                    created,
                }
            }
            None => SyncKeySource::Missing,
        }
    } else if gateway_args.auth.jwt_public_keys.is_empty()
        && gateway_args.auth.jwt_previous_keys.is_empty()
    {
        tracing::warn!(
            "no sync-token key configured (OA_SYNC_JWT_KEY): Khala refuses every client"
        );
        SyncKeySource::Missing
    } else {
        SyncKeySource::Configured
    };
    let auth = gateway_args.auth_config().context("sync-token keys")?;
    let gateway = gateway_args.gateway_config();
    let runner = projector_args.runner_config(HashMap::new());
    Ok((
        SyncSettings {
            auth,
            gateway,
            runner,
        },
        key_source,
    ))
}

/// Adds the projectors, the relay and Khala to `server`. Every projected topic the gateway
/// config does not name gets a 7-day, 10,000-row policy; the runners prune each topic by its
/// policy's retention.
pub fn with_sync(server: Server, app: &App, settings: SyncSettings) -> (Server, SyncLane) {
    let SyncSettings {
        auth,
        gateway: mut config,
        runner: mut runner_config,
    } = settings;
    let store = SyncStore::new(app.database(), all_specs());
    for spec in all_specs() {
        if config.policy(spec.topic).is_none() {
            config.topics.push(sync_gateway::TopicPolicy::new(
                spec.topic,
                Duration::from_secs(7 * 86_400),
                10_000,
            ));
        }
    }
    runner_config.retention = config
        .topics
        .iter()
        .map(|p| (p.topic.clone(), p.retention))
        .collect();
    let notifier = Arc::new(SyncNotifier::new());
    let context = Arc::new(ProjectorContext::new(
        store.clone(),
        app.database().journal(),
        notifier.clone(),
        app.notifier().appended(),
        runner_config,
    ));
    let verifier = Verifier::new(auth, Revocations::durable(app.database().clone()));
    // Operator actions on others' behalf go to the journal, not a side table.
    verifier.revocations().owners().set_operator_log(Arc::new(
        crate::operator_log::JournalOperatorLog::new(app.engine().clone()),
    ));
    // Khala reads the replica when there is one; heads for its wait decisions come from the
    // primary, which also carries every wake-up (NOTIFY does not reach a standby).
    let source = match app.read_database() {
        Some(replica) => StoreSource::replica(
            SyncStore::new(replica, all_specs()),
            store.clone(),
            notifier.clone(),
        ),
        None => StoreSource::new(store.clone(), notifier.clone()),
    };
    let gateway = Gateway::start(
        config,
        Arc::new(source),
        verifier,
        app.shutdown_token().clone(),
    );
    let mut server = server
        .merge(sync_gateway::server::routes(gateway.clone()))
        .merge_internal(sync_gateway::server::internal_routes(gateway.clone()))
        .merge_internal(sync_gateway::server::token_routes(gateway.clone()));
    for projector in all_projectors() {
        let context = context.clone();
        let name = format!("projector {}", projector.spec().name);
        server = server.task(name, move |shutdown| async move {
            projector.run(context, shutdown).await;
            Ok(())
        });
    }
    if let Some(pool) = store.pg_pool().cloned() {
        let notifier = notifier.clone();
        server = server.task("sync-notify-relay", move |shutdown| async move {
            projectors::notify::run_pg_relay(pool, notifier, shutdown).await;
            Ok(())
        });
    }
    let closing = gateway.clone();
    server = server.task("khala", move |shutdown| async move {
        shutdown.cancelled().await;
        closing.closed().await;
        Ok(())
    });
    (
        server,
        SyncLane {
            store,
            notifier,
            gateway,
            context,
        },
    )
}

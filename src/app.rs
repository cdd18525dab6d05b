//! [`App`]: the shared handle every handler and task holds. Cheap to clone.

use std::sync::Arc;

use anyhow::Context;
use engine::auth::InternalAuth;
use engine::clock::Stamps;
use engine::notify::JournalNotifier;
use engine::{Database, Engine};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ReadDatabaseConfig, RuntimeConfig};

/// A lazily connected pool on the read replica. A short acquire timeout: a reader of a standby
/// that is down hears so within two seconds (hydration's `503 replica_unavailable`, a tailer's
/// retry) instead of queueing for the primary pool's ten. No ping before checkout, as on the
/// primary: a connection the standby's restart broke fails its next query and is dropped.
fn replica_pool(replica: &ReadDatabaseConfig) -> anyhow::Result<sqlx::PgPool> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(&replica.url)
        .context("--read-database-url")?
        .application_name("openagents-runtime-reader");
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(replica.max_connections)
        .test_before_acquire(false)
        .idle_timeout(std::time::Duration::from_secs(300))
        .max_lifetime(std::time::Duration::from_secs(1800))
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy_with(options))
}

/// The running runtime's shared state.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    database: Database,
    /// The read replica's pool (`--read-database-url`), connected lazily: a standby that is down
    /// at start or later fails the reads that need it, never start-up or a command.
    read_database: Option<Database>,
    engine: Arc<Engine>,
    notifier: Arc<JournalNotifier>,
    auth: Arc<InternalAuth>,
    metrics: PrometheusHandle,
    /// Cancelled when the process starts shutting down. Owned here; cancelled by
    /// [`crate::Server`] (on a signal, a failed task, or the caller's request). Every long-running
    /// task and every SSE stream selects on it and ends promptly.
    shutdown: CancellationToken,
    /// Tracks detached work that shutdown must wait for (SSE stream producers). Closed and
    /// awaited by [`crate::Server`] after the listeners stop accepting.
    tracker: TaskTracker,
}

impl App {
    /// Connects to the configured database, applies migrations and builds the engine.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, or the read replica's URL does not parse
    /// (the replica itself is connected lazily).
    pub async fn open(config: RuntimeConfig) -> anyhow::Result<Self> {
        let database = Database::connect(&config.database)
            .await
            .with_context(|| format!("open journal {}", config.database.describe()))?;
        database.migrate().await.context("migrate the journal")?;
        let read_database = match &config.read_database {
            Some(replica) => Some(Database::Postgres(replica_pool(replica)?)),
            None => None,
        };
        Ok(Self::build(
            config,
            database,
            read_database,
            Stamps::system(),
        ))
    }

    /// Builds the runtime over an open, migrated database with the given clock and id source.
    ///
    /// # Panics
    /// When `config.read_database` holds a URL that does not parse (`serve` checked it first).
    pub fn new(config: RuntimeConfig, database: Database, stamps: Stamps) -> Self {
        let read_database = config.read_database.as_ref().map(|replica| {
            Database::Postgres(replica_pool(replica).expect("a read replica URL that parses"))
        });
        Self::build(config, database, read_database, stamps)
    }

    fn build(
        config: RuntimeConfig,
        database: Database,
        read_database: Option<Database>,
        stamps: Stamps,
    ) -> Self {
        let notifier = Arc::new(JournalNotifier::new());
        let engine = Arc::new(Engine::new(
            database.journal(),
            stamps,
            notifier.clone(),
            config.engine.clone(),
        ));
        let auth = Arc::new(InternalAuth::new(
            config.signature_secret.clone(),
            database.clone(),
        ));
        Self {
            inner: Arc::new(Inner {
                config,
                database,
                read_database,
                engine,
                notifier,
                auth,
                metrics: crate::telemetry::prometheus(),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    /// The read replica Khala and hydration read, when one is configured.
    pub fn read_database(&self) -> Option<&Database> {
        self.inner.read_database.as_ref()
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    pub fn notifier(&self) -> &Arc<JournalNotifier> {
        &self.inner.notifier
    }

    pub fn auth(&self) -> &Arc<InternalAuth> {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    /// The process's shutdown token (see the field docs).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The tracker shutdown waits on (see the field docs).
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Whether shutdown has begun (`/readyz` then reports not ready).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

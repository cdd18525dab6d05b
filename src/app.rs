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

use crate::config::RuntimeConfig;

/// The running runtime's shared state.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    database: Database,
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
    /// When the database cannot be opened or migrated.
    pub async fn open(config: RuntimeConfig) -> anyhow::Result<Self> {
        let database = Database::connect(&config.database)
            .await
            .with_context(|| format!("open journal {}", config.database.describe()))?;
        database.migrate().await.context("migrate the journal")?;
        Ok(Self::new(config, database, Stamps::system()))
    }

    /// Builds the runtime over an open, migrated database with the given clock and id source.
    pub fn new(config: RuntimeConfig, database: Database, stamps: Stamps) -> Self {
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

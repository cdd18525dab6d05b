//! [`Server`]: composes the HTTP routers, extra listeners and long-running tasks of one runtime
//! process and runs them until shutdown.
//!
//! Adding a component is one call:
//! - a router on the main listener behind internal signature auth: [`Server::merge_internal`];
//! - a router on the main listener with its own auth (e.g. a WebSocket gateway): [`Server::merge`];
//! - a router on its own port (e.g. the Lightning executor, which serves `/healthz` at its root):
//!   [`Server::listener`];
//! - a long-running task `run(deps, shutdown)`: [`Server::task`].
//!
//! Shutdown (SIGINT/SIGTERM, [`App::shutdown_token`] cancelled, or any task or listener exiting)
//! cancels the token; listeners stop accepting and finish in-flight requests, SSE streams end,
//! tasks return; then the server waits (up to the configured grace) for all of it.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::serve::ListenerExt;
use axum::Router;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::App;

type TaskFn = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

struct NamedTask {
    name: String,
    run: TaskFn,
}

struct Listener {
    name: String,
    listener: TcpListener,
    router: Router,
}

/// One runtime process: routers, listeners and tasks, built up and then run.
pub struct Server {
    app: App,
    main: TcpListener,
    /// Routes under `/internal/v1` guarded by internal signature auth.
    internal: Router,
    /// Routes with their own (or no) auth, on the main listener.
    public: Router,
    listeners: Vec<Listener>,
    tasks: Vec<NamedTask>,
}

impl Server {
    /// Binds the main listener at `app.config().listen` and registers the runtime's own HTTP API
    /// and tasks (the lease sweeper; the PostgreSQL notification relay).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(app: App) -> anyhow::Result<Self> {
        let addr = app.config().listen;
        let main = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let mut server = Self {
            internal: crate::api::internal_router(app.clone()),
            public: crate::api::ops_router(app.clone()),
            app,
            main,
            listeners: Vec::new(),
            tasks: Vec::new(),
        };
        server = server.with_runtime_tasks();
        Ok(server)
    }

    fn with_runtime_tasks(self) -> Self {
        let sweeper_app = self.app.clone();
        let server = self.task("lease-sweeper", move |shutdown| async move {
            crate::sweeper::run(
                sweeper_app.engine().clone(),
                sweeper_app.config().workers.sweep_interval,
                shutdown,
            )
            .await
        });
        let retention_app = server.app.clone();
        let server = server.task("idempotency-expiry", move |shutdown| async move {
            run_idempotency_expiry(retention_app, shutdown).await;
            Ok(())
        });
        match server.app.database().clone() {
            engine::Database::Postgres(pool) => {
                let notifier = server.app.notifier().clone();
                server.task("journal-notify-relay", move |shutdown| async move {
                    engine::notify::run_pg_relay(pool, notifier, shutdown).await;
                    Ok(())
                })
            }
            engine::Database::Sqlite { .. } => server,
        }
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// The path templates the main listener routes (internal and public routers), read from the
    /// router itself, so a route added anywhere shows up here. The authorization matrix test
    /// (tests/it/trust.rs) fails when one of them has no row.
    pub fn route_paths(&self) -> Vec<String> {
        let mut paths = route_paths_of(&self.internal);
        paths.extend(route_paths_of(&self.public));
        paths.sort();
        paths.dedup();
        paths
    }

    /// The main listener's address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.main
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The address of the extra listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.listener.local_addr().ok())
    }

    /// Adds routes to the main listener, behind internal signature auth (paths should start
    /// with `/internal/v1`).
    pub fn merge_internal(mut self, router: Router) -> Self {
        self.internal = self.internal.merge(router);
        self
    }

    /// Adds routes to the main listener without internal auth (the router brings its own).
    pub fn merge(mut self, router: Router) -> Self {
        self.public = self.public.merge(router);
        self
    }

    /// Binds `addr` and serves `router` there (its own port, its own root paths).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn listener(
        mut self,
        name: impl Into<String>,
        addr: SocketAddr,
        router: Router,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {name} listener at {addr}"))?;
        self.listeners.push(Listener {
            name,
            listener,
            router,
        });
        Ok(self)
    }

    /// Adds a long-running task. It gets the shutdown token and must return soon after it is
    /// cancelled. A task that returns (or fails) before shutdown stops the whole process.
    pub fn task<F, Fut>(mut self, name: impl Into<String>, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push(NamedTask {
            name: name.into(),
            run: Box::new(move |token| Box::pin(run(token))),
        });
        self
    }

    /// Runs everything until shutdown, then drains.
    ///
    /// # Errors
    /// The first error of a task or listener that ended before shutdown, or a drain that took
    /// longer than the grace period.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Server {
            app,
            main,
            internal,
            public,
            listeners,
            tasks,
        } = self;
        let shutdown = app.shutdown_token().clone();
        let router = crate::api::compose(app.clone(), internal, public);
        let mut running: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
        let all = std::iter::once(Listener {
            name: "api".into(),
            listener: main,
            router,
        })
        .chain(listeners);
        for Listener {
            name,
            listener,
            router,
        } in all
        {
            let addr = listener.local_addr().ok();
            tracing::info!(listener = %name, addr = ?addr, "listening");
            let token = shutdown.clone();
            running.spawn(async move {
                let served = axum::serve(
                    listener.tap_io(sync_gateway::server::no_delay),
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .with_context(|| format!("listener {name}"));
                (format!("listener {name}"), served)
            });
        }
        for NamedTask { name, run } in tasks {
            let future = run(shutdown.clone());
            running.spawn(async move { (format!("task {name}"), future.await) });
        }

        let mut failure: Option<anyhow::Error> = None;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => tracing::info!("shutdown requested"),
            Some(joined) = running.join_next() => {
                let (name, result) = flatten(joined);
                match result {
                    // It saw the cancellation before this select did: a normal stop.
                    Ok(()) if shutdown.is_cancelled() => tracing::info!(component = %name, "stopped"),
                    Ok(()) => tracing::error!(component = %name, "exited before shutdown"),
                    Err(ref error) => tracing::error!(component = %name, error.message = %error, error.cause_chain = ?error, "failed"),
                }
                if !(result.is_ok() && shutdown.is_cancelled()) {
                    failure = Some(result.err().unwrap_or_else(|| anyhow::anyhow!("{name} exited before shutdown")));
                }
            }
        }
        shutdown.cancel();
        app.tracker().close();

        let grace = app.config().shutdown_grace;
        let drain = async {
            while let Some(joined) = running.join_next().await {
                let (name, result) = flatten(joined);
                match result {
                    Ok(()) => tracing::info!(component = %name, "stopped"),
                    Err(error) => {
                        tracing::warn!(component = %name, error.message = %error, "stopped with an error")
                    }
                }
            }
            app.tracker().wait().await;
        };
        let drained = tokio::time::timeout(grace, drain).await.is_ok();
        if !drained {
            running.abort_all();
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown grace period ran out"
            );
        }
        app.database().close().await;
        match failure {
            Some(error) => Err(error),
            None if !drained => Err(anyhow::anyhow!("shutdown did not drain within {grace:?}")),
            None => {
                tracing::info!("shut down cleanly");
                Ok(())
            }
        }
    }
}

fn flatten(
    joined: Result<(String, anyhow::Result<()>), tokio::task::JoinError>,
) -> (String, anyhow::Result<()>) {
    match joined {
        Ok(pair) => pair,
        Err(error) => (
            "a component".to_owned(),
            Err(anyhow::anyhow!("panicked or was aborted: {error}")),
        ),
    }
}

/// Cancels `token` on SIGINT or SIGTERM. A second SIGINT during the drain exits at once (code
/// 130), so an operator can still force-quit.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(error.message = %error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = token.cancelled() => return,
        }
        token.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("second SIGINT: exiting without draining");
            std::process::exit(130);
        }
    });
}

/// The path templates registered in `router`. axum exposes them only through `Debug` (its path
/// router prints `RouteId(n): "/path"` pairs before its `fallback_router`); the caller checks the
/// result is not empty, so a
/// change of that format fails loudly instead of hiding routes.
fn route_paths_of(router: &Router) -> Vec<String> {
    let debug = format!("{router:?}");
    // Only the path router: the fallback router registers axum's own catch-all paths.
    let routed = debug.split("fallback_router").next().unwrap_or_default();
    let mut paths = Vec::new();
    let mut rest = routed;
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at + "RouteId(".len()..];
        let Some(close) = rest.find("): \"") else {
            continue;
        };
        if !rest[..close].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let value = &rest[close + 4..];
        if let Some(end) = value.find('"') {
            let path = &value[..end];
            if path.starts_with('/') {
                paths.push(path.to_owned());
            }
        }
    }
    paths
}

/// Deletes idempotency records older than the configured TTL, at start and then every TTL/24
/// (an hour by default); failures are logged and retried on the next tick.
async fn run_idempotency_expiry(app: App, shutdown: CancellationToken) {
    let ttl = app.config().http.idempotency_ttl;
    let every = (ttl / 24).max(std::time::Duration::from_secs(1));
    loop {
        let now = app.engine().now();
        let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let cutoff =
            aggregates::Timestamp::from_unix_micros(now.unix_micros().saturating_sub(ttl_micros))
                .unwrap_or(now);
        match engine::retention::prune_idempotency_keys(app.database(), cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired idempotency records deleted"),
            Err(e) => tracing::warn!(error.message = %e, "expiring idempotency records failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

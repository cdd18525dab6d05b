//! The L402 gateway (`serve --l402-gateway`): a reverse proxy that takes compiled route configs over
//! `/ops/deployment`, `/ops/deploy` and `/ops/rollback`, answers unpaid requests to priced routes with
//! `402` and `WWW-Authenticate: L402 macaroon="…", invoice="…"` (the invoice from LND `AddInvoice`),
//! accepts `Authorization: L402 <macaroon>:<preimage>` when the preimage hashes to the macaroon's
//! payment hash, and proxies to the route's upstream.
//!
//! The gateway keeps its deployments in memory and, when given a state file, writes them there
//! (atomically) so a restart comes back with the active config and its rollback history.
//!
//! # Layout
//! - this file: [`GatewayConfig`] and [`L402Gateway`];
//! - `state`: deployments (parse, deploy, rollback, the state file);
//! - `paywall`: the `402` challenge and the check of an `L402` credential;
//! - `proxy`: the streaming reverse proxy to a route's upstream (ADR 0121);
//! - `routes`: the `axum::Router` (`/healthz`, `/ops/*`, and route matching for everything else).

mod paywall;
mod proxy;
mod routes;
mod state;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use aggregates::payment::services::LightningNode;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use proxy::MAX_PROXY_BODY;
pub use routes::router;
pub use state::{parse_config, DeployError, Deployment, GatewayRoute};

use state::PersistedState;

/// The gateway's settings. `Debug` hides the secrets.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Bearer token for `/ops/*` (and for smoke credentials); `None` leaves `/ops/*` open (tests,
    /// loopback-only deployments).
    pub ops_token: Option<String>,
    /// The macaroon root key.
    pub root_key: Vec<u8>,
    /// Macaroon location.
    pub location: String,
    /// Lifetime of challenge invoices and the macaroons minted with them.
    pub invoice_expiry_secs: u64,
    /// Where deployments are persisted, if anywhere.
    pub state_file: Option<PathBuf>,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("ops_token", &self.ops_token.as_ref().map(|_| "<redacted>"))
            .field("root_key", &"<redacted>")
            .field("location", &self.location)
            .field("invoice_expiry_secs", &self.invoice_expiry_secs)
            .field("state_file", &self.state_file)
            .finish()
    }
}

/// The gateway. Share it behind an `Arc`.
pub struct L402Gateway {
    node: Arc<dyn LightningNode>,
    config: GatewayConfig,
    /// Deployments; written only under this lock (std: no `.await` while held).
    state: RwLock<PersistedState>,
    http: reqwest::Client,
}

impl L402Gateway {
    /// Creates the gateway, loading persisted deployments if a state file exists.
    ///
    /// # Errors
    /// When the state file exists but cannot be read or parsed.
    pub fn new(node: Arc<dyn LightningNode>, config: GatewayConfig) -> anyhow::Result<Arc<Self>> {
        let state = match &config.state_file {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("read gateway state {}: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("parse gateway state {}: {e}", path.display()))?
            }
            _ => PersistedState::default(),
        };
        Ok(Arc::new(Self {
            node,
            config,
            state: RwLock::new(state),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| anyhow::anyhow!("http client: {e}"))?,
        }))
    }
}

fn error_json(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (
        status,
        json!({ "ok": false, "error": { "code": code, "message": message } }).to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

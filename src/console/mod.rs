//! The live, read-only console at `/console`: a browser page built on `clients/khala-js`, served
//! from assets embedded in the binary, plus what it needs from the server.
//!
//! # Layout
//! - [`assets`]: the embedded HTML, CSS and JavaScript (no Node, no CDN at build or run time).
//! - [`error`]: the console's error envelope and codes.
//! - [`login`]: one-time login codes (printed by `serve` on the embedded journal) and their
//!   exchange for an operator sync token; renewal of an operator token.
//! - [`ops`]: `GET /ops/v1/status`, the documented JSON operations snapshot (projectors, topics,
//!   sync sockets, readiness), for operator tokens.
//!
//! Every route authenticates itself (sync tokens or login codes); none is behind the internal
//! signature, because the browser never holds the internal secret.

pub mod assets;
pub mod error;
pub mod login;
pub mod ops;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::sync::SyncLane;
use crate::{App, Server};

/// The console's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    pub(crate) app: App,
    pub(crate) lane: SyncLane,
    pub(crate) codes: Arc<login::LoginCodes>,
}

impl Console {
    pub fn new(app: App, lane: SyncLane) -> Self {
        Self {
            app,
            lane,
            codes: Arc::new(login::LoginCodes::default()),
        }
    }

    /// Issues a new one-time login code (valid for [`login::CODE_TTL`]).
    pub fn issue_login_code(&self) -> String {
        self.codes.issue()
    }

    /// The console's routes: the page and its assets, the login exchange, renewal and the ops
    /// snapshot.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/console", get(assets::index))
            .route("/console/", get(assets::index))
            .route("/console/assets/{name}", get(assets::asset))
            .route("/console/api/login", post(login::exchange))
            .route("/console/api/renew", post(login::renew))
            .route("/ops/v1/status", get(ops::status))
            .with_state(self.clone())
    }
}

/// Mounts the console on `server`'s main listener.
pub fn with_console(server: Server, app: &App, lane: &SyncLane) -> (Server, Console) {
    let console = Console::new(app.clone(), lane.clone());
    (server.merge(console.routes()), console)
}

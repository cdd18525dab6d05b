//! Test helpers (feature `testing`): a gateway served on `127.0.0.1:0` over a swappable sync
//! source, tokens signed with a test key, and a writer interface for the stream so the same
//! tests can run over the in-memory source or a database-backed one.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::mint::{mint, MintRequest};
use crate::auth::{AuthConfig, KeySet, Revocations, Verifier};
use crate::client::{compat_params, socket_url, ClientError, KhalaClient};
use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use crate::server;
use crate::source::{DocOwner, MemorySource, SyncSource};

pub const TEST_KID: &str = "test-k1";
pub const TEST_SECRET: &str = "khala-test-secret-0123456789abcdef";

/// Auth config with the test HS256 key active.
pub fn auth_config() -> AuthConfig {
    AuthConfig::new(
        KeySet::new()
            .with_active_hs256(TEST_KID, TEST_SECRET)
            .expect("test key is valid"),
    )
}

/// Signs arbitrary claims with the test key (for expired, foreign or malformed tokens).
pub fn sign_claims(claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(TEST_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("test claims sign")
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The writes a test makes to the sync stream (what a projector commit would do).
#[async_trait]
pub trait TestStream: Send + Sync {
    /// Commits one doc change and returns its watermark.
    async fn append(&self, topic: &str, doc_key: &str, payload: Value, owner: DocOwner) -> u64;
    /// Prunes rows `<= through` (retention).
    async fn prune_through(&self, topic: &str, through: u64);
    /// Rebuilds the topic (a new epoch).
    async fn rebuild(&self, topic: &str);
    /// Makes reads fail (sabotage), or work again.
    async fn set_unavailable(&self, unavailable: bool);
}

#[async_trait]
impl TestStream for MemorySource {
    async fn append(&self, topic: &str, doc_key: &str, payload: Value, owner: DocOwner) -> u64 {
        MemorySource::append(self, topic, doc_key, payload, owner).watermark
    }
    async fn prune_through(&self, topic: &str, through: u64) {
        MemorySource::prune_through(self, topic, through);
    }
    async fn rebuild(&self, topic: &str) {
        MemorySource::rebuild(self, topic);
    }
    async fn set_unavailable(&self, unavailable: bool) {
        MemorySource::set_unavailable(self, unavailable);
    }
}

/// A running gateway.
pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    pub gateway: Gateway,
    pub stream: Arc<dyn TestStream>,
    pub shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

/// A fresh in-memory source as both the gateway's source and the test's writer.
pub fn memory_source() -> (Arc<dyn SyncSource>, Arc<dyn TestStream>) {
    let source = Arc::new(MemorySource::new());
    (source.clone(), source)
}

impl TestApp {
    /// A gateway over a fresh in-memory source with `config`.
    pub async fn spawn(config: GatewayConfig) -> TestApp {
        let (source, stream) = memory_source();
        Self::spawn_with(config, source, stream, Revocations::in_memory()).await
    }

    /// A gateway over `source` (written through `stream`) with a revocation list.
    pub async fn spawn_with(
        config: GatewayConfig,
        source: Arc<dyn SyncSource>,
        stream: Arc<dyn TestStream>,
        revocations: Revocations,
    ) -> TestApp {
        Self::spawn_full(config, source, stream, revocations, auth_config()).await
    }

    /// Like [`TestApp::spawn_with`] with its own token configuration.
    pub async fn spawn_full(
        config: GatewayConfig,
        source: Arc<dyn SyncSource>,
        stream: Arc<dyn TestStream>,
        revocations: Revocations,
        auth: AuthConfig,
    ) -> TestApp {
        let shutdown = CancellationToken::new();
        let verifier = Verifier::new(auth, revocations);
        let gateway = Gateway::start(config, source, verifier, shutdown.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        // The root puts mint and revoke behind its internal-signature auth; this harness stands in
        // for it as the operator (docs/security.md), so gateway tests can mint and revoke freely.
        let operator = std::sync::Arc::new(engine::auth::InternalClaims {
            oa_role: Some(engine::auth::OPERATOR_ROLE.to_owned()),
            ..engine::auth::InternalClaims::new(0, 60)
        });
        let router = server::routes(gateway.clone()).merge(
            server::internal_routes(gateway.clone())
                .merge(server::token_routes(gateway.clone()))
                .layer(axum::Extension(operator)),
        );
        let server = tokio::spawn(server::serve(
            listener,
            router,
            gateway.clone(),
            shutdown.clone(),
        ));
        TestApp {
            addr,
            base_url: format!("http://{addr}"),
            gateway,
            stream,
            shutdown,
            server,
        }
    }

    /// A token for `subject` (`user:<id>` / `guest:<scope>`) with `scopes`.
    pub fn token(&self, subject: &str, scopes: &[&str]) -> String {
        self.token_with(MintRequest {
            subject: subject.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..MintRequest::default()
        })
    }

    pub fn token_with(&self, request: MintRequest) -> String {
        mint(
            self.gateway.verifier().config(),
            self.gateway.known_topics(),
            &request,
            now_secs(),
        )
        .expect("test token mints")
        .token
    }

    pub fn socket_url(&self, token: &str) -> String {
        socket_url(&self.base_url, token, &compat_params())
    }

    /// Connects (not joined).
    ///
    /// # Errors
    /// The refusal or transport error.
    pub async fn connect(&self, token: &str) -> Result<KhalaClient, ClientError> {
        KhalaClient::connect(&self.socket_url(token)).await
    }

    /// Connects and joins `sync:v1`.
    ///
    /// # Panics
    /// When the connection or join fails.
    pub async fn joined(&self, token: &str) -> KhalaClient {
        let mut client = self.connect(token).await.expect("connect");
        client
            .join(serde_json::json!({}))
            .await
            .expect("join transport")
            .expect("join ok");
        client
    }

    /// Cancels the gateway and waits for sockets and tasks to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

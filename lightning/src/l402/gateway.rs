//! The L402 gateway (`serve --l402-gateway`): a reverse proxy that takes compiled route configs over
//! `/ops/deployment`, `/ops/deploy` and `/ops/rollback`, answers unpaid requests to priced routes with
//! `402` and `WWW-Authenticate: L402 macaroon="…", invoice="…"` (the invoice from LND `AddInvoice`),
//! accepts `Authorization: L402 <macaroon>:<preimage>` when the preimage hashes to the macaroon's
//! payment hash, and proxies to the route's upstream.
//!
//! The gateway keeps its deployments in memory and, when given a state file, writes them there
//! (atomically) so a restart comes back with the active config and its rollback history.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aggregates::payment::services::LightningNode;
use aggregates::payment::Msat;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use engine::clock::now_ms;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::compile::{classify_path, config_hash, path_regex, PathKind};
use super::macaroon::Macaroon;

/// Largest request body the proxy forwards.
pub const MAX_PROXY_BODY: usize = 1024 * 1024;

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

/// A route as the gateway serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayRoute {
    pub id: String,
    pub paywall_id: String,
    pub host: String,
    pub path: String,
    pub upstream_url: String,
    pub timeout_ms: u64,
    pub amount_msats: u64,
}

/// A deployed config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub deployment_id: String,
    pub config_hash: String,
    pub request_id: Option<String>,
    pub applied_at_ms: i64,
    pub aperture_yaml: String,
    pub routes: Vec<GatewayRoute>,
}

impl Deployment {
    fn snapshot(&self) -> Value {
        json!({
            "deploymentId": self.deployment_id,
            "configHash": self.config_hash,
            "appliedAtMs": self.applied_at_ms,
            "ruleCount": self.routes.len(),
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    active: Option<String>,
    /// Deployments by config hash (the rollback targets).
    configs: BTreeMap<String, Deployment>,
    deploy_count: u64,
}

/// Why a config cannot be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("configHash does not match the YAML (expected {expected})")]
    HashMismatch { expected: String },
    #[error("invalid config YAML: {0}")]
    InvalidYaml(String),
}

#[derive(Deserialize)]
struct YamlConfig {
    version: u32,
    routes: Vec<YamlRoute>,
}

#[derive(Deserialize)]
struct YamlRoute {
    id: String,
    #[serde(rename = "match")]
    matcher: YamlMatch,
    upstream: YamlUpstream,
    auth: YamlAuth,
    pricing: YamlPricing,
}

#[derive(Deserialize)]
struct YamlMatch {
    host: String,
    path: String,
}

#[derive(Deserialize)]
struct YamlUpstream {
    url: String,
    #[allow(dead_code)]
    protocol: String,
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct YamlAuth {
    #[serde(rename = "type")]
    kind: String,
    paywall_id: String,
}

#[derive(Deserialize)]
struct YamlPricing {
    mode: String,
    amount_msats: u64,
}

/// Parses and checks a compiled config.
///
/// # Errors
/// [`DeployError`] when the hash does not match or the YAML is not a version-1 route config.
pub fn parse_config(config_hash_given: &str, yaml: &str) -> Result<Vec<GatewayRoute>, DeployError> {
    let expected = config_hash(yaml);
    if expected != config_hash_given {
        return Err(DeployError::HashMismatch { expected });
    }
    let parsed: YamlConfig =
        serde_yaml::from_str(yaml).map_err(|e| DeployError::InvalidYaml(e.to_string()))?;
    if parsed.version != 1 {
        return Err(DeployError::InvalidYaml(format!(
            "unsupported version {}",
            parsed.version
        )));
    }
    parsed
        .routes
        .into_iter()
        .map(|r| {
            if r.auth.kind != "l402"
                || r.pricing.mode != "fixed_msats"
                || r.pricing.amount_msats == 0
            {
                return Err(DeployError::InvalidYaml(format!(
                    "route {} is not a priced l402 route",
                    r.id
                )));
            }
            if classify_path(&r.matcher.path) == PathKind::Regex {
                path_regex(&r.matcher.path)
                    .map_err(|e| DeployError::InvalidYaml(format!("route {}: {e}", r.id)))?;
            }
            reqwest::Url::parse(&r.upstream.url)
                .map_err(|e| DeployError::InvalidYaml(format!("route {}: {e}", r.id)))?;
            Ok(GatewayRoute {
                id: r.id,
                paywall_id: r.auth.paywall_id,
                host: r.matcher.host.to_lowercase(),
                path: r.matcher.path,
                upstream_url: r.upstream.url,
                timeout_ms: r.upstream.timeout_ms,
                amount_msats: r.pricing.amount_msats,
            })
        })
        .collect()
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

/// Where a matched request goes upstream: the rest of the path after a prefix route's prefix is
/// appended to the upstream URL; exact, regex and catch-all routes go to the upstream URL itself.
fn path_match(pattern: &str, path: &str) -> Option<String> {
    match classify_path(pattern) {
        PathKind::Catchall => Some(path.trim_start_matches('/').to_owned()),
        PathKind::Exact => (pattern == path).then(String::new),
        PathKind::Prefix => {
            let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
            path.strip_prefix(prefix)
                .map(str::to_owned)
                .or_else(|| (path == prefix.trim_end_matches('/')).then(String::new))
        }
        PathKind::Regex => path_regex(pattern).ok()?.is_match(path).then(String::new),
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

    /// The active deployment.
    pub fn active(&self) -> Option<Deployment> {
        let state = self.state.read().expect("state lock");
        state
            .active
            .as_ref()
            .and_then(|h| state.configs.get(h))
            .cloned()
    }

    /// How many deploys changed the active config since the state began.
    pub fn deploy_count(&self) -> u64 {
        self.state.read().expect("state lock").deploy_count
    }

    fn persist(&self, state: &PersistedState) -> anyhow::Result<()> {
        if let Some(path) = &self.config.state_file {
            // Durably: a crash right after a deploy must not come back with the old active
            // config, or with a torn or empty state file.
            engine::fs::replace_file(path, &serde_json::to_vec_pretty(state)?)
                .map_err(|e| anyhow::anyhow!("write gateway state {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Activates a config.
    ///
    /// # Errors
    /// [`DeployError`], or a persistence failure.
    pub fn deploy(
        &self,
        deployment_id: &str,
        request_id: Option<String>,
        config_hash_given: &str,
        yaml: &str,
    ) -> anyhow::Result<Deployment> {
        let routes = parse_config(config_hash_given, yaml)?;
        let deployment = Deployment {
            deployment_id: deployment_id.to_owned(),
            config_hash: config_hash_given.to_owned(),
            request_id,
            applied_at_ms: now_ms(),
            aperture_yaml: yaml.to_owned(),
            routes,
        };
        let mut state = self.state.write().expect("state lock");
        let mut next = state.clone();
        next.configs
            .insert(deployment.config_hash.clone(), deployment.clone());
        next.active = Some(deployment.config_hash.clone());
        next.deploy_count += 1;
        self.persist(&next)?;
        *state = next;
        Ok(deployment)
    }

    /// Re-activates an earlier config.
    ///
    /// # Errors
    /// When the target is unknown, or persisting fails.
    pub fn rollback(&self, target_config_hash: &str) -> anyhow::Result<Deployment> {
        let mut state = self.state.write().expect("state lock");
        let target = state
            .configs
            .get(target_config_hash)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("unknown config {target_config_hash}"))?;
        let mut next = state.clone();
        next.active = Some(target_config_hash.to_owned());
        self.persist(&next)?;
        *state = next;
        Ok(target)
    }

    fn is_ops(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.config.ops_token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|raw| raw.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())))
            .unwrap_or(false)
    }

    /// Checks an `L402 <macaroon>:<preimage>` credential for `route`.
    fn verify(&self, credential: &str, route: &GatewayRoute) -> Result<(), &'static str> {
        let (macaroon, preimage) = credential.rsplit_once(':').ok_or("malformed credential")?;
        let macaroon = Macaroon::from_base64(macaroon).map_err(|_| "malformed macaroon")?;
        macaroon
            .verify_signature(&self.config.root_key)
            .map_err(|_| "macaroon signature does not verify")?;
        let hash = macaroon
            .payment_hash()
            .ok_or("macaroon has no payment hash")?;
        let preimage = hex::decode(preimage.trim()).map_err(|_| "preimage is not hex")?;
        if preimage.len() != 32 || Sha256::digest(&preimage).as_slice() != hash {
            return Err("preimage does not match the payment hash");
        }
        for caveat in &macaroon.caveats {
            let (key, value) = caveat.split_once('=').ok_or("unknown caveat")?;
            match key {
                "services" => {
                    let ok = value
                        .split(',')
                        .any(|s| s.split(':').next() == Some(route.paywall_id.as_str()));
                    if !ok {
                        return Err("credential is for another paywall");
                    }
                }
                "valid_until" => {
                    let until: i64 = value.parse().map_err(|_| "bad valid_until caveat")?;
                    if chrono::Utc::now().timestamp() > until {
                        return Err("credential expired");
                    }
                }
                _ => return Err("unknown caveat"),
            }
        }
        Ok(())
    }

    async fn challenge(&self, route: &GatewayRoute, smoke: bool) -> Response {
        let mut preimage = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut preimage);
        let created = self
            .node
            .add_invoice(
                Msat(route.amount_msats),
                &format!("L402 {}", route.id),
                self.config.invoice_expiry_secs,
                Some(preimage),
            )
            .await;
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                tracing::warn!(route = %route.id, error.message = %error, "AddInvoice failed");
                return error_json(
                    StatusCode::BAD_GATEWAY,
                    "invoice_unavailable",
                    "cannot create an invoice",
                );
            }
        };
        let hash: [u8; 32] = hex::decode(created.payment_hash.as_str())
            .ok()
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 32]);
        let mut token_id = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut token_id);
        let valid_until = chrono::Utc::now().timestamp()
            + i64::try_from(self.config.invoice_expiry_secs).unwrap_or(3600);
        let macaroon = Macaroon::mint(
            &self.config.root_key,
            &self.config.location,
            Macaroon::l402_identifier(&hash, &token_id),
            vec![
                format!("services={}:0", route.paywall_id),
                format!("valid_until={valid_until}"),
            ],
        );
        let mac64 = macaroon.to_base64();
        let mut response = (
            StatusCode::PAYMENT_REQUIRED,
            json!({
                "ok": false,
                "error": { "code": "payment_required", "message": "payment required" },
                "invoice": created.payment_request,
                "amountMsats": route.amount_msats,
                "routeId": route.id,
            })
            .to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(&format!(
            "L402 macaroon=\"{mac64}\", invoice=\"{}\"",
            created.payment_request
        )) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if smoke {
            // Ops probes (reconcile) get a credential for this challenge, like the original's
            // `x-oa-smoke-auth`: proves macaroon verification and proxying without moving money.
            if let Ok(value) =
                HeaderValue::from_str(&format!("L402 {mac64}:{}", hex::encode(preimage)))
            {
                headers.insert("x-oa-smoke-auth", value);
            }
        }
        response
    }

    async fn proxy(&self, route: &GatewayRoute, rest: &str, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, MAX_PROXY_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return error_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body too large",
                )
            }
        };
        let mut url = route.upstream_url.clone();
        if !rest.is_empty() {
            if !url.ends_with('/') {
                url.push('/');
            }
            url.push_str(rest);
        }
        if let Some(query) = parts.uri.query() {
            url.push('?');
            url.push_str(query);
        }
        let mut upstream = self
            .http
            .request(parts.method.clone(), &url)
            .timeout(Duration::from_millis(route.timeout_ms.max(1)));
        for (name, value) in &parts.headers {
            let skip = matches!(
                name.as_str(),
                "authorization"
                    | "host"
                    | "connection"
                    | "content-length"
                    | "transfer-encoding"
                    | "te"
                    | "upgrade"
                    | "proxy-authorization"
                    | "keep-alive"
            );
            if !skip {
                upstream = upstream.header(name, value);
            }
        }
        let result = upstream.body(body).send().await;
        match result {
            Ok(response) => {
                let status = response.status();
                let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
                let bytes: Bytes = response.bytes().await.unwrap_or_default();
                let mut out = Response::new(Body::from(bytes));
                *out.status_mut() = status;
                if let Some(ct) = content_type {
                    out.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                out
            }
            Err(error) => {
                tracing::warn!(route = %route.id, error.message = %error, "upstream request failed");
                error_json(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "the upstream did not answer",
                )
            }
        }
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

/// The gateway's routes: `/healthz`, `/ops/deployment`, `/ops/deploy`, `/ops/rollback`, and the
/// proxy for everything else.
pub fn router(gateway: Arc<L402Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ops/deployment", get(ops_deployment))
        .route("/ops/deploy", post(ops_deploy))
        .route("/ops/rollback", post(ops_rollback))
        .fallback(proxy_handler)
        .with_state(gateway)
}

async fn healthz(State(gateway): State<Arc<L402Gateway>>) -> Response {
    let active = gateway.active();
    axum::Json(json!({
        "ok": true,
        "activeConfigHash": active.as_ref().map(|d| d.config_hash.clone()),
        "ruleCount": active.map(|d| d.routes.len()).unwrap_or(0),
    }))
    .into_response()
}

async fn ops_deployment(State(gateway): State<Arc<L402Gateway>>, headers: HeaderMap) -> Response {
    if !gateway.is_ops(&headers) {
        return error_json(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid ops token",
        );
    }
    axum::Json(json!({ "ok": true, "deployment": gateway.active().map(|d| d.snapshot()) }))
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeployBody {
    #[serde(default)]
    request_id: Option<String>,
    deployment_id: String,
    config_hash: String,
    aperture_yaml: String,
}

async fn ops_deploy(
    State(gateway): State<Arc<L402Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !gateway.is_ops(&headers) {
        return error_json(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid ops token",
        );
    }
    let body: DeployBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("invalid json body: {e}"),
            )
        }
    };
    match gateway.deploy(
        &body.deployment_id,
        body.request_id,
        &body.config_hash,
        &body.aperture_yaml,
    ) {
        Ok(deployment) => {
            axum::Json(json!({ "ok": true, "deployment": deployment.snapshot() })).into_response()
        }
        Err(error) => match error.downcast_ref::<DeployError>() {
            Some(deploy_error) => error_json(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                &deploy_error.to_string(),
            ),
            None => {
                tracing::error!(error.message = %error, "deploy failed");
                error_json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "deploy failed",
                )
            }
        },
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RollbackBody {
    target_config_hash: String,
}

async fn ops_rollback(
    State(gateway): State<Arc<L402Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !gateway.is_ops(&headers) {
        return error_json(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid ops token",
        );
    }
    let body: RollbackBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("invalid json body: {e}"),
            )
        }
    };
    match gateway.rollback(&body.target_config_hash) {
        Ok(deployment) => {
            axum::Json(json!({ "ok": true, "deployment": deployment.snapshot() })).into_response()
        }
        Err(error) => error_json(StatusCode::NOT_FOUND, "unknown_config", &error.to_string()),
    }
}

async fn proxy_handler(State(gateway): State<Arc<L402Gateway>>, request: Request) -> Response {
    let Some(active) = gateway.active() else {
        return error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_deployment",
            "no config is deployed",
        );
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("")
        .to_lowercase();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
        _ => host,
    };
    let path = request.uri().path().to_owned();
    let matched = active.routes.iter().find_map(|route| {
        if !host_matches(&route.host, &host) {
            return None;
        }
        path_match(&route.path, &path).map(|rest| (route, rest))
    });
    let Some((route, rest)) = matched else {
        return error_json(
            StatusCode::NOT_FOUND,
            "no_route",
            "no route matches this request",
        );
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .map(str::to_owned);
    let credential = authorization.as_deref().and_then(|raw| {
        let (scheme, rest) = raw.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("l402") || scheme.eq_ignore_ascii_case("lsat"))
            .then(|| rest.trim().to_owned())
    });
    match credential {
        Some(credential) => match gateway.verify(&credential, route) {
            Ok(()) => gateway.proxy(route, &rest, request).await,
            Err(reason) => error_json(StatusCode::UNAUTHORIZED, "invalid_l402_credential", reason),
        },
        None => {
            let smoke = gateway.config.ops_token.is_some() && gateway.is_ops(request.headers());
            gateway.challenge(route, smoke).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_paths_match_like_the_compiler_orders_them() {
        assert!(host_matches("*", "a.com"));
        assert!(host_matches("*.a.com", "x.a.com"));
        assert!(!host_matches("*.a.com", "a.com"));
        assert!(host_matches("a.com", "a.com"));
        assert_eq!(path_match("/x", "/x"), Some(String::new()));
        assert_eq!(path_match("/x", "/x/y"), None);
        assert_eq!(path_match("/api/*", "/api/v1/a"), Some("v1/a".into()));
        assert_eq!(path_match("/api/*", "/api"), Some(String::new()));
        assert_eq!(path_match("/*", "/anything"), Some("anything".into()));
        assert_eq!(path_match("/v[0-9]+", "/v2"), Some(String::new()));
    }

    #[tokio::test]
    async fn deployments_survive_a_restart_through_the_state_file_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let node: Arc<dyn LightningNode> = Arc::new(
            crate::lnd::LndNode::connect(&crate::lnd::LndConfig {
                address: "127.0.0.1:1".into(),
                tls_cert_pem: cert.cert.pem().into_bytes(),
                macaroon_hex: "00".into(),
            })
            .await
            .unwrap(),
        );
        let config = GatewayConfig {
            ops_token: None,
            root_key: vec![1; 32],
            location: "t".into(),
            invoice_expiry_secs: 60,
            state_file: Some(dir.path().join("state.json")),
        };
        let yaml_a = "version: 1\nroutes: []\n";
        let yaml_b = "version: 1\nroutes:\n  - id: p:r\n    match:\n      host: h.com\n      path: /x\n    upstream:\n      url: http://u.example.com/x\n      protocol: http\n      timeout_ms: 1000\n    auth:\n      type: l402\n      paywall_id: p\n    pricing:\n      mode: fixed_msats\n      amount_msats: 5\n";
        let first = L402Gateway::new(node.clone(), config.clone()).unwrap();
        first
            .deploy("d1", None, &config_hash(yaml_a), yaml_a)
            .unwrap();
        first
            .deploy("d2", None, &config_hash(yaml_b), yaml_b)
            .unwrap();
        let restarted = L402Gateway::new(node, config).unwrap();
        let active = restarted.active().unwrap();
        assert_eq!(active.deployment_id, "d2");
        assert_eq!(active.routes[0].amount_msats, 5);
        assert_eq!(restarted.deploy_count(), 2);
        restarted.rollback(&config_hash(yaml_a)).unwrap();
        assert_eq!(restarted.active().unwrap().deployment_id, "d1");
        assert!(restarted.rollback("cfg_unknown").is_err());
    }

    #[test]
    fn a_config_whose_hash_does_not_match_is_refused() {
        let yaml = "version: 1\nroutes: []\n";
        assert!(matches!(
            parse_config("cfg_00", yaml),
            Err(DeployError::HashMismatch { .. })
        ));
        assert_eq!(parse_config(&config_hash(yaml), yaml).unwrap(), vec![]);
    }
}

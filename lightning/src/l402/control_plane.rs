//! Where paywall intents come from and where deployments and gateway events are recorded: the
//! control plane's internal API (`POST {base}/api/internal/lightning-ops/control-plane/query` and
//! `…/mutation`, `{ functionName, args }` with the shared secret in `args.secret`), or local files.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::compile::{paywalls_from_json, Diagnostic, Paywall};

/// A deployment intent (`lightning/ops:recordGatewayCompileIntent`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentIntent {
    pub deployment_id: String,
    pub config_hash: String,
    /// `pending`, `applied`, `failed` or `rolled_back`.
    pub status: String,
    pub diagnostics: Vec<Diagnostic>,
    pub request_id: String,
    pub metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at_ms: Option<i64>,
}

/// What the control plane answered.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub deployment_id: String,
    pub status: String,
}

/// A gateway event (`lightning/ops:recordGatewayDeploymentEvent`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEvent {
    pub paywall_id: String,
    pub owner_id: String,
    pub event_type: String,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub request_id: String,
    pub metadata: Value,
}

#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// Paywalls to compile (statuses active and paused; paused ones are left out by the compiler).
    async fn list_paywalls(&self) -> anyhow::Result<Vec<Paywall>>;
    async fn record_deployment(
        &self,
        intent: &DeploymentIntent,
    ) -> anyhow::Result<DeploymentRecord>;
    async fn record_event(&self, event: &GatewayEvent) -> anyhow::Result<()>;
}

/// The control plane's HTTP API. `Debug` hides the secret.
pub struct ApiControlPlane {
    base_url: String,
    secret: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiControlPlane")
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ApiControlPlane {
    /// # Errors
    /// When the base URL or the secret is empty, or the HTTP client cannot be built.
    pub fn new(base_url: &str, secret: &str) -> anyhow::Result<Self> {
        let base_url = base_url.trim().trim_end_matches('/').to_owned();
        anyhow::ensure!(
            !base_url.is_empty(),
            "the control-plane base URL is required"
        );
        anyhow::ensure!(
            !secret.trim().is_empty(),
            "the control-plane secret is required"
        );
        Ok(Self {
            base_url,
            secret: secret.trim().to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    async fn call(
        &self,
        kind: &str,
        function_name: &str,
        mut args: Value,
    ) -> anyhow::Result<Value> {
        args["secret"] = json!(self.secret);
        let endpoint = format!(
            "{}/api/internal/lightning-ops/control-plane/{kind}",
            self.base_url
        );
        let response = self
            .http
            .post(&endpoint)
            .header("accept", "application/json")
            .json(&json!({ "functionName": function_name, "args": args }))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("control-plane {kind}:{function_name} request failed: {e}")
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let scrub = |text: String| text.replace(&self.secret, "<redacted>");
        if !status.is_success() {
            anyhow::bail!(scrub(format!(
                "control-plane {kind}:{function_name} failed with {status}: {}",
                body.get("error").cloned().unwrap_or(Value::Null)
            )));
        }
        if let Some(error) = body.get("error").filter(|e| !e.is_null()) {
            anyhow::bail!(scrub(format!(
                "control-plane {kind}:{function_name} error: {error}"
            )));
        }
        Ok(body)
    }
}

fn deployment_from(body: &Value, fallback: &DeploymentIntent) -> DeploymentRecord {
    body.get("deployment")
        .or_else(|| body.get("result").and_then(|r| r.get("deployment")))
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_else(|| DeploymentRecord {
            deployment_id: fallback.deployment_id.clone(),
            status: fallback.status.clone(),
        })
}

#[async_trait]
impl ControlPlane for ApiControlPlane {
    async fn list_paywalls(&self) -> anyhow::Result<Vec<Paywall>> {
        let body = self
            .call(
                "query",
                "lightning/ops:listPaywallControlPlaneState",
                json!({ "statuses": ["active", "paused"] }),
            )
            .await?;
        paywalls_from_json(&body)
    }

    async fn record_deployment(
        &self,
        intent: &DeploymentIntent,
    ) -> anyhow::Result<DeploymentRecord> {
        let body = self
            .call(
                "mutation",
                "lightning/ops:recordGatewayCompileIntent",
                serde_json::to_value(intent)?,
            )
            .await?;
        Ok(deployment_from(&body, intent))
    }

    async fn record_event(&self, event: &GatewayEvent) -> anyhow::Result<()> {
        self.call(
            "mutation",
            "lightning/ops:recordGatewayDeploymentEvent",
            serde_json::to_value(event)?,
        )
        .await?;
        Ok(())
    }
}

/// Paywalls from a JSON file; deployments and events appended as JSON lines to a records file.
#[derive(Debug)]
pub struct FileControlPlane {
    input: PathBuf,
    records: Option<PathBuf>,
    /// Serialises appends to the records file.
    lock: Mutex<()>,
}

impl FileControlPlane {
    pub fn new(input: PathBuf, records: Option<PathBuf>) -> Self {
        Self {
            input,
            records,
            lock: Mutex::new(()),
        }
    }

    fn append(&self, record: Value) -> anyhow::Result<()> {
        let Some(path) = &self.records else {
            return Ok(());
        };
        let _guard = self.lock.lock().expect("records lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
        writeln!(file, "{record}")?;
        file.sync_data()?;
        Ok(())
    }

    /// Reads the records file back (for tests and inspection).
    ///
    /// # Errors
    /// When the file cannot be read or a line is not JSON.
    pub fn read_records(&self) -> anyhow::Result<Vec<Value>> {
        let Some(path) = &self.records else {
            return Ok(Vec::new());
        };
        if !path.exists() {
            return Ok(Vec::new());
        }
        std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(anyhow::Error::from))
            .collect()
    }
}

#[async_trait]
impl ControlPlane for FileControlPlane {
    async fn list_paywalls(&self) -> anyhow::Result<Vec<Paywall>> {
        let text = std::fs::read_to_string(&self.input)
            .map_err(|e| anyhow::anyhow!("read paywalls {}: {e}", self.input.display()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("paywalls file {} is not JSON: {e}", self.input.display())
        })?;
        paywalls_from_json(&value)
    }

    async fn record_deployment(
        &self,
        intent: &DeploymentIntent,
    ) -> anyhow::Result<DeploymentRecord> {
        self.append(json!({ "kind": "deployment", "recordedAtMs": chrono::Utc::now().timestamp_millis(), "deployment": intent }))?;
        Ok(DeploymentRecord {
            deployment_id: intent.deployment_id.clone(),
            status: intent.status.clone(),
        })
    }

    async fn record_event(&self, event: &GatewayEvent) -> anyhow::Result<()> {
        self.append(json!({ "kind": "event", "recordedAtMs": chrono::Utc::now().timestamp_millis(), "event": event }))
    }
}

//! `l402 reconcile`: compile → record `pending` → read the gateway's active deployment → deploy →
//! health check → expect a `402` L402 challenge on a paid route → expect a `2xx` through the proxy with a
//! valid credential → `applied`. A failure after deploying rolls back to the previous active config
//! (`rolled_back`), or ends `failed` when there is none. Reconciling a config the gateway already runs
//! deploys nothing (it only re-probes). Every run's summary is recorded with the control plane.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use serde::Serialize;
use serde_json::{json, Value};

use super::compile::{compile, CompiledArtifact, CompiledRule, Diagnostic, PathKind};
use super::control_plane::{ControlPlane, DeploymentIntent, GatewayEvent};

/// Where the gateway is and how to probe it.
#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    pub request_id: String,
    /// The gateway's base URL (its `/ops/*` and `/healthz`).
    pub gateway_url: String,
    /// Bearer token for the gateway's `/ops/*` (also earns a smoke credential on the challenge).
    pub ops_token: Option<String>,
    pub health_path: String,
    /// Probe URL for the challenge and proxy checks; derived from the first route when absent.
    pub probe_url: Option<String>,
    /// An `Authorization` header value to use for the proxy check instead of the gateway's smoke
    /// credential.
    pub proxy_authorization: Option<String>,
    pub timeout: Duration,
}

/// Why a reconcile did not apply. `as_str()` is the summary's `failureCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    CompileValidationFailed,
    ActiveLookupFailed,
    DeployApplyFailed,
    HealthCheckFailed,
    ChallengeCheckFailed,
    ProxyCheckFailed,
    RollbackFailed,
}

impl FailureCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureCode::CompileValidationFailed => "compile_validation_failed",
            FailureCode::ActiveLookupFailed => "active_lookup_failed",
            FailureCode::DeployApplyFailed => "deploy_apply_failed",
            FailureCode::HealthCheckFailed => "health_check_failed",
            FailureCode::ChallengeCheckFailed => "challenge_check_failed",
            FailureCode::ProxyCheckFailed => "proxy_check_failed",
            FailureCode::RollbackFailed => "rollback_failed",
        }
    }
}

/// The run's summary (the original `ReconcileRunSummary`, plus `changed`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileSummary {
    pub ok: bool,
    pub request_id: String,
    pub execution_path: String,
    pub config_hash: String,
    pub rule_count: usize,
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
    pub deployment_status: String,
    pub deployment_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<FailureCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
    pub health_ok: bool,
    pub challenge_ok: bool,
    pub proxy_ok: bool,
    /// False when the gateway already ran this config (nothing was deployed).
    pub changed: bool,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActiveDeployment {
    deployment_id: String,
    config_hash: String,
}

struct Gateway<'a> {
    http: reqwest::Client,
    options: &'a ReconcileOptions,
}

impl Gateway<'_> {
    fn ops(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.options.ops_token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.options.gateway_url.trim_end_matches('/'))
    }

    async fn active(&self) -> Result<Option<ActiveDeployment>, String> {
        let response = self
            .ops(self.http.get(self.url("/ops/deployment")))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status_{}", response.status().as_u16()));
        }
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match body.get("deployment") {
            None | Some(Value::Null) => Ok(None),
            Some(d) => serde_json::from_value(d.clone())
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<(), String> {
        let response = self
            .ops(self.http.post(self.url(path)))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("status_{}", response.status().as_u16()))
        }
    }

    async fn health(&self) -> Result<(), String> {
        let response = self
            .http
            .get(self.url(&self.options.health_path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("status_{}", response.status().as_u16()))
        }
    }

    fn probe(&self, rule: &CompiledRule) -> Result<(String, Option<String>), String> {
        if let Some(url) = &self.options.probe_url {
            return Ok((url.clone(), None));
        }
        let path = match rule.path_kind {
            PathKind::Exact => rule.path_pattern.clone(),
            PathKind::Prefix => {
                format!("{}reconcile-probe", rule.path_pattern.trim_end_matches('*'))
            }
            PathKind::Catchall => "/reconcile-probe".to_owned(),
            PathKind::Regex => return Err("a regex route needs an explicit probe URL".into()),
        };
        let host = (!rule.host_pattern.contains('*')).then(|| rule.host_pattern.clone());
        Ok((self.url(&path), host))
    }

    /// Expects a 402 L402 challenge; returns the credential to use for the proxy check.
    async fn challenge(&self, rule: &CompiledRule) -> Result<String, String> {
        let (url, host) = self.probe(rule)?;
        let mut request = self.ops(self.http.get(&url));
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status().as_u16() != 402 {
            return Err(format!("status_{}", response.status().as_u16()));
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !(challenge.starts_with("L402 ")
            && challenge.contains("macaroon=\"")
            && challenge.contains("invoice=\""))
        {
            return Err("missing_l402_challenge".into());
        }
        let smoke = response
            .headers()
            .get("x-oa-smoke-auth")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.options
            .proxy_authorization
            .clone()
            .or(smoke)
            .ok_or_else(|| "missing_proxy_authorization_header".to_owned())
    }

    async fn proxy(&self, rule: &CompiledRule, authorization: &str) -> Result<(), String> {
        let (url, host) = self.probe(rule)?;
        let mut request = self.http.get(&url).header(AUTHORIZATION, authorization);
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("status_{}", response.status().as_u16()))
        }
    }
}

fn deployment_id(request_id: &str, prefix: &str) -> String {
    let normalized: String = request_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(90)
        .collect();
    format!(
        "{prefix}_{}",
        if normalized.is_empty() {
            "run".into()
        } else {
            normalized
        }
    )
}

struct Run<'a> {
    control: &'a dyn ControlPlane,
    compiled: CompiledArtifact,
    request_id: String,
    deployment_id: String,
    health_ok: bool,
    challenge_ok: bool,
    proxy_ok: bool,
}

impl Run<'_> {
    fn metadata(
        &self,
        failure: Option<(FailureCode, &str)>,
        rolled_back_from: Option<&str>,
    ) -> Value {
        json!({
            "executionPath": "hosted-node",
            "correlation": {
                "requestId": self.request_id, "deploymentId": self.deployment_id,
                "configHash": self.compiled.config_hash,
            },
            "progress": { "healthOk": self.health_ok, "challengeOk": self.challenge_ok, "proxyOk": self.proxy_ok },
            "failure": failure.map(|(code, reason)| json!({ "code": code.as_str(), "reason": reason })),
            "rollback": rolled_back_from.map(|from| json!({ "rolledBackFrom": from })),
        })
    }

    async fn record(
        &self,
        status: &str,
        metadata: Value,
        rolled_back_from: Option<String>,
    ) -> anyhow::Result<String> {
        let record = self
            .control
            .record_deployment(&DeploymentIntent {
                deployment_id: self.deployment_id.clone(),
                config_hash: self.compiled.config_hash.clone(),
                status: status.to_owned(),
                diagnostics: self.compiled.diagnostics.clone(),
                request_id: self.request_id.clone(),
                metadata,
                rolled_back_from,
                applied_at_ms: (status == "applied").then(|| chrono::Utc::now().timestamp_millis()),
            })
            .await?;
        Ok(record.deployment_id)
    }

    async fn event(&self, event_type: &str, level: &str, metadata: Value) -> anyhow::Result<()> {
        let Some(probe) = self.compiled.rules.first() else {
            return Ok(());
        };
        self.control
            .record_event(&GatewayEvent {
                paywall_id: probe.paywall_id.clone(),
                owner_id: probe.owner_id.clone(),
                event_type: event_type.to_owned(),
                level: level.to_owned(),
                request_id: self.request_id.clone(),
                metadata: json!({ "executionPath": "hosted-node", "routeId": probe.id,
                                  "deploymentId": self.deployment_id, "configHash": self.compiled.config_hash,
                                  "details": metadata }),
            })
            .await
    }

    fn summary(
        &self,
        status: &str,
        failure: Option<(FailureCode, String)>,
        rolled_back_from: Option<String>,
        changed: bool,
    ) -> ReconcileSummary {
        ReconcileSummary {
            ok: status == "applied",
            request_id: self.request_id.clone(),
            execution_path: "hosted-node".into(),
            config_hash: self.compiled.config_hash.clone(),
            rule_count: self.compiled.rule_count,
            valid: self.compiled.valid,
            diagnostics: self.compiled.diagnostics.clone(),
            deployment_status: status.to_owned(),
            deployment_id: self.deployment_id.clone(),
            failure_code: failure.as_ref().map(|(c, _)| *c),
            failure_reason: failure.map(|(_, r)| r),
            rolled_back_from,
            health_ok: self.health_ok,
            challenge_ok: self.challenge_ok,
            proxy_ok: self.proxy_ok,
            changed,
        }
    }

    /// After a failure past deploy: roll back to `previous` if there is one.
    async fn fail_after_deploy(
        mut self,
        gateway: &Gateway<'_>,
        previous: Option<ActiveDeployment>,
        code: FailureCode,
        reason: String,
    ) -> anyhow::Result<ReconcileSummary> {
        let Some(previous) = previous else {
            self.deployment_id = self
                .record("failed", self.metadata(Some((code, &reason)), None), None)
                .await?;
            self.event(
                &format!("gateway_reconcile_failed_{}", code.as_str()),
                "error",
                json!({ "failureReason": reason }),
            )
            .await?;
            return Ok(self.summary("failed", Some((code, reason)), None, true));
        };
        let rollback = gateway
            .post(
                "/ops/rollback",
                json!({ "requestId": self.request_id, "deploymentId": self.deployment_id,
                        "targetConfigHash": previous.config_hash }),
            )
            .await;
        match rollback {
            Ok(()) => {
                let from = previous.config_hash.clone();
                self.deployment_id = self
                    .record(
                        "rolled_back",
                        self.metadata(Some((code, &reason)), Some(&from)),
                        Some(from.clone()),
                    )
                    .await?;
                self.event("gateway_reconcile_rolled_back", "warn",
                    json!({ "failureCode": code.as_str(), "failureReason": reason, "rolledBackFrom": from, "previousDeploymentId": previous.deployment_id })).await?;
                Ok(self.summary("rolled_back", Some((code, reason)), Some(from), true))
            }
            Err(rollback_error) => {
                let code = FailureCode::RollbackFailed;
                self.deployment_id = self
                    .record(
                        "failed",
                        self.metadata(Some((code, &rollback_error)), None),
                        None,
                    )
                    .await?;
                self.event(
                    "gateway_reconcile_failed_rollback_failed",
                    "error",
                    json!({ "failureReason": reason, "rollbackFailure": rollback_error }),
                )
                .await?;
                Ok(self.summary("failed", Some((code, rollback_error)), None, true))
            }
        }
    }
}

/// Runs one reconcile.
///
/// # Errors
/// Only when the control plane cannot be read or written; gateway failures are outcomes in the
/// summary, never errors.
pub async fn reconcile_once(
    control: &dyn ControlPlane,
    options: &ReconcileOptions,
) -> anyhow::Result<ReconcileSummary> {
    let paywalls = control.list_paywalls().await?;
    let compiled = compile(&paywalls);
    let gateway = Gateway {
        http: reqwest::Client::builder()
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        options,
    };
    let mut run = Run {
        control,
        request_id: options.request_id.clone(),
        deployment_id: deployment_id(&options.request_id, "dep_reconcile"),
        compiled,
        health_ok: false,
        challenge_ok: false,
        proxy_ok: false,
    };
    if !run.compiled.valid {
        run.deployment_id = deployment_id(&options.request_id, "dep_compile");
        let code = FailureCode::CompileValidationFailed;
        run.deployment_id = run
            .record(
                "failed",
                run.metadata(Some((code, code.as_str())), None),
                None,
            )
            .await?;
        return Ok(run.summary(
            "failed",
            Some((code, code.as_str().to_owned())),
            None,
            false,
        ));
    }
    let probe = run.compiled.rules[0].clone();

    let previous = match gateway.active().await {
        Ok(previous) => previous,
        Err(reason) => {
            let code = FailureCode::ActiveLookupFailed;
            run.deployment_id = run
                .record("failed", run.metadata(Some((code, &reason)), None), None)
                .await?;
            return Ok(run.summary("failed", Some((code, reason)), None, false));
        }
    };

    if let Some(active) = previous
        .as_ref()
        .filter(|p| p.config_hash == run.compiled.config_hash)
    {
        // Unchanged: deploy nothing, only verify what runs.
        run.deployment_id = active.deployment_id.clone();
        let verdict = async {
            gateway
                .health()
                .await
                .map_err(|r| (FailureCode::HealthCheckFailed, r))?;
            run.health_ok = true;
            let credential = gateway
                .challenge(&probe)
                .await
                .map_err(|r| (FailureCode::ChallengeCheckFailed, r))?;
            run.challenge_ok = true;
            gateway
                .proxy(&probe, &credential)
                .await
                .map_err(|r| (FailureCode::ProxyCheckFailed, r))?;
            run.proxy_ok = true;
            Ok::<(), (FailureCode, String)>(())
        }
        .await;
        let summary = match verdict {
            Ok(()) => run.summary("applied", None, None, false),
            Err(failure) => run.summary("failed", Some(failure), None, false),
        };
        run.event(
            "gateway_reconcile_unchanged",
            if summary.ok { "info" } else { "error" },
            serde_json::to_value(&summary)?,
        )
        .await?;
        return Ok(summary);
    }

    run.deployment_id = run
        .record("pending", run.metadata(None, None), None)
        .await?;
    if let Err(reason) = gateway
        .post(
            "/ops/deploy",
            json!({ "requestId": run.request_id, "deploymentId": run.deployment_id,
                    "configHash": run.compiled.config_hash, "apertureYaml": run.compiled.aperture_yaml }),
        )
        .await
    {
        return run.fail_after_deploy(&gateway, previous, FailureCode::DeployApplyFailed, reason).await;
    }
    if let Err(reason) = gateway.health().await {
        return run
            .fail_after_deploy(&gateway, previous, FailureCode::HealthCheckFailed, reason)
            .await;
    }
    run.health_ok = true;
    run.event("gateway_reconcile_health_ok", "info", json!({}))
        .await?;
    let credential = match gateway.challenge(&probe).await {
        Ok(credential) => credential,
        Err(reason) => {
            return run
                .fail_after_deploy(
                    &gateway,
                    previous,
                    FailureCode::ChallengeCheckFailed,
                    reason,
                )
                .await
        }
    };
    run.challenge_ok = true;
    run.event(
        "gateway_reconcile_challenge_ok",
        "info",
        json!({ "statusCode": 402 }),
    )
    .await?;
    if let Err(reason) = gateway.proxy(&probe, &credential).await {
        return run
            .fail_after_deploy(&gateway, previous, FailureCode::ProxyCheckFailed, reason)
            .await;
    }
    run.proxy_ok = true;
    run.event("gateway_reconcile_proxy_ok", "info", json!({}))
        .await?;
    run.deployment_id = run
        .record("applied", run.metadata(None, None), None)
        .await?;
    let summary = run.summary("applied", None, None, true);
    run.event(
        "gateway_reconcile_applied",
        "info",
        serde_json::to_value(&summary)?,
    )
    .await?;
    Ok(summary)
}

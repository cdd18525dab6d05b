//! The gateway's deployments: a compiled config parsed and checked, activated or rolled back, and
//! written (atomically) to the state file when there is one.

use std::collections::BTreeMap;

use engine::clock::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::L402Gateway;
use crate::l402::compile::{classify_path, config_hash, path_regex, PathKind};

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
    pub(super) fn snapshot(&self) -> Value {
        json!({
            "deploymentId": self.deployment_id,
            "configHash": self.config_hash,
            "appliedAtMs": self.applied_at_ms,
            "ruleCount": self.routes.len(),
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct PersistedState {
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

impl L402Gateway {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aggregates::payment::services::LightningNode;

    use super::*;
    use crate::l402::gateway::GatewayConfig;

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

//! The gateway's HTTP routes: `/healthz`, the `/ops/*` deployment API, and the fallback that
//! matches a request to a deployed route and answers with the paywall or the proxy.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{error_json, DeployError, L402Gateway};
use crate::l402::compile::{classify_path, path_regex, PathKind};

impl L402Gateway {
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
}

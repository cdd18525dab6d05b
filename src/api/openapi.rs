//! The OpenAPI document of the HTTP API, generated from the handlers' annotations (utoipa) and
//! served at `GET /internal/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{error, health, runs, workers};
use crate::audit::http as artifacts;
use crate::audit::log_http as audit_log;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "runtime_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-OA-RUNTIME-SIGNATURE",
                "v1.<base64url(claims)>.<base64url(HMAC-SHA256(claims segment, secret))>; \
                 mint one with `openagents-runtime token internal`",
            ))),
        );
        components.add_security_scheme(
            "sync_token",
            SecurityScheme::Http(utoipa::openapi::security::Http::new(
                utoipa::openapi::security::HttpAuthScheme::Bearer,
            )),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenAgents Runtime internal API",
        description = "The control plane's `/internal/v1` contract, served unchanged, plus additive routes. \
                       Every route needs an `X-OA-RUNTIME-SIGNATURE` token. Errors use the envelope \
                       `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    paths(
        health::internal_health,
        runs::create_run, runs::list_runs, runs::snapshot, runs::append_frame, runs::cancel,
        runs::start, runs::finish, runs::stream,
        workers::create, workers::list, workers::snapshot, workers::request, workers::stop,
        workers::heartbeat, workers::report_event, workers::stream,
        artifacts::receipt, artifacts::replay, artifacts::audit_bundle,
        audit_log::key, audit_log::latest, audit_log::at_size, audit_log::inclusion,
        audit_log::consistency,
        sync_gateway::http::hydrate, sync_gateway::http::mint_token, sync_gateway::http::revoke,
    ),
    components(schemas(error::ErrorEnvelope, error::ErrorBody, error::ErrorCode)),
    modifiers(&Security),
    security(("runtime_signature" = [])),
    tags(
        (name = "health", description = "Probes"),
        (name = "runs", description = "Runs: frames, cancellation, lifecycle, streams"),
        (name = "workers", description = "Codex workers: registration, requests, leases, streams"),
        (name = "artifacts", description = "A run's receipt, REPLAY.jsonl and audit bundle (owner only)"),
        (name = "sync", description = "Khala over HTTP: hydration (sync token), sync token minting and revocation (internal token)"),
        (name = "audit", description = "The audit log: signed checkpoints of the Merkle tree over the journal, inclusion and consistency proofs"),
    )
)]
pub struct ApiDoc;

/// `GET /internal/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

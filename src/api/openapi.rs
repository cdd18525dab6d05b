//! The OpenAPI document of the HTTP API, generated from the handlers' annotations (utoipa) and
//! served at `GET /internal/v1/openapi.json`.
//!
//! Its operations come from the same declarations that mount the routes: each component's
//! `OpenApiRouter` (`utoipa_axum::routes!` over the handlers' `#[utoipa::path]`), so a path is
//! written once ([`api_doc`]).
//!
//! The document must be valid (tests/it/openapi.rs checks it with an independent validator) and
//! true (the same test runs the Schemathesis fuzzer against a real server). Three things keep it
//! true without repeating the server's rules by hand:
//! - [`ApiId`] is the schema of every validated id, built from `aggregates::ids`' own rules;
//! - `CommonResponses` adds the answers every route can give because of the layers in front of
//!   it (signature auth, principal headers, body extraction), so a handler's annotation lists
//!   only what the handler itself decides;
//! - [`document`] writes the serving process's configured limits (`tail_ms`) into the document.

use axum::extract::State;
use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::app::App;

use crate::api::schema::ApiId;
use crate::api::{error, workers};
use crate::audit::artifacts_http as artifacts;
use crate::audit::log_http as audit_log;

/// The answers every route gives because of the layers in front of its handler, added to each
/// operation that does not describe them itself:
/// - every route: `400` (a path that is not UTF-8, a malformed id, query, header or body);
/// - routes behind internal signature auth (`/internal/v1/*`, `/api/*`): `401` (missing, bad,
///   expired or replayed token), `403` (a claim contradicts the request; a principal header that
///   contradicts the token; a resource of another principal or org) and `503` (the nonce store or
///   journal is unavailable);
/// - routes with a path parameter: `404`;
/// - routes with a body: `413` (larger than the body limit) and `415` (not JSON).
struct CommonResponses;

impl CommonResponses {
    fn add(path: &str, operation: &mut Operation) {
        let internal = path.starts_with("/internal/v1/") || path.starts_with("/api/");
        let mut codes = vec![(
            "400",
            "`invalid_request`: a malformed id, query, header or body",
        )];
        if internal {
            codes.extend([
                ("401", "`unauthorized`: no, a malformed, an expired or a replayed X-OA-RUNTIME-SIGNATURE token, or no principal"),
                ("403", "`forbidden`: a token claim or principal header contradicts the request, or the resource belongs to another principal or org"),
                ("503", "the nonce store or the journal is unavailable; retry"),
            ]);
        }
        if path.contains('{') {
            codes.push(("404", "`not_found`: no such resource"));
        }
        let idempotent = operation
            .parameters
            .iter()
            .flatten()
            .any(|p| p.name == "Idempotency-Key");
        if idempotent {
            codes.push((
                "409",
                "`conflict`: `idempotency_key_reused` (the key was used for another request), or the command conflicts with the resource's state",
            ));
        }
        if operation.request_body.is_some() {
            codes.extend([
                ("413", "the body is larger than the configured limit"),
                ("415", "the body is not `application/json`"),
            ]);
        }
        for (code, description) in codes {
            operation
                .responses
                .responses
                .entry(code.to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                                .build(),
                        )
                        .build()
                        .into()
                });
        }
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                Self::add(path, operation);
            }
        }
    }
}

/// A body that may be left out (`request_body(content = Option<T>)`) is absent, not `null`:
/// [`crate::api::extract::ApiJson`] reads an empty body as `{}` and refuses a `null` one. utoipa
/// renders `Option<T>` as `oneOf: [null, T]`; this keeps `T` and leaves the body not required.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::OneOf;
        for item in openapi.paths.paths.values_mut() {
            let Some(body) = item.post.as_mut().and_then(|op| op.request_body.as_mut()) else {
                continue;
            };
            for content in body.content.values_mut() {
                let Some(RefOr::T(Schema::OneOf(OneOf { items, .. }))) = &content.schema else {
                    continue;
                };
                let not_null: Vec<_> = items
                    .iter()
                    .filter(|item| !matches!(item, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into()))
                    .cloned()
                    .collect();
                if let [only] = not_null.as_slice() {
                    content.schema = Some(only.clone());
                }
            }
        }
    }
}

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
    components(schemas(
        error::ErrorEnvelope, error::ErrorBody, error::ErrorCode, ApiId, workers::StatusFilter,
        crate::api::stream::SseEvent,
    )),
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

/// The document of every API route `serve` can mount, whether this process mounts it or not:
/// [`ApiDoc`]'s info, security and shared components, plus the operations of each component's
/// route declarations (the runtime's own, the run artifacts, the audit log, Khala's HTTP routes).
pub fn api_doc() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::api::routes::internal_routes().into_openapi());
    doc.merge(artifacts::routes().into_openapi());
    doc.merge(audit_log::routes().into_openapi());
    doc.merge(sync_gateway::server::openapi());
    OptionalBodies.modify(&mut doc);
    CommonResponses.modify(&mut doc);
    doc
}

/// `GET /internal/v1/openapi.json`: the document, with this process's configured limits.
pub async fn document(State(app): State<App>) -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    let mut doc = DOC.get_or_init(api_doc).clone();
    let tail_max = u64::try_from(app.config().http.stream_tail_max.as_millis()).unwrap_or(u64::MAX);
    set_parameter_maximum(&mut doc, "tail_ms", tail_max);
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    unsigned_64(&mut doc);
    Json(doc)
}

/// utoipa renders a `u64` as `format: int64, minimum: 0`, but the server takes every `u64` (to
/// 2^64 - 1, beyond int64): such a schema says `format: uint64` with that `maximum` instead.
fn unsigned_64(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            let unsigned = object.get("format").and_then(|f| f.as_str()) == Some("int64")
                && object.get("minimum").and_then(|m| m.as_u64()) == Some(0);
            if unsigned {
                object.insert("format".into(), "uint64".into());
                object
                    .entry("maximum")
                    .or_insert_with(|| serde_json::Value::from(u64::MAX));
            }
            object.values_mut().for_each(unsigned_64);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_64),
        _ => {}
    }
}

/// Sets the `maximum` of every parameter called `name` (a limit that comes from configuration).
fn set_parameter_maximum(doc: &mut utoipa::openapi::OpenApi, name: &str, maximum: u64) {
    for item in doc.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.name != name {
                    continue;
                }
                if let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut() {
                    schema.maximum = Some(utoipa::Number::UInt(
                        usize::try_from(maximum).unwrap_or(usize::MAX),
                    ));
                }
            }
        }
    }
}

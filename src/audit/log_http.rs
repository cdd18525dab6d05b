//! The audit log's routes, under `/internal/v1/audit` behind the internal signature auth:
//!
//! - `GET /internal/v1/audit/key`: the audit public key (x-only, hex) and signature scheme;
//! - `GET …/checkpoints/latest` and `GET …/checkpoints/{tree_size}`: signed checkpoints;
//! - `GET …/proof/inclusion?aggregate_type=&aggregate_id=&sequence=[&tree_size=]`: an event's
//!   inclusion proof against a stored checkpoint (the latest unless `tree_size` names one); only
//!   for the event's owner (runs and their receipts) or an operator token;
//! - `GET …/proof/consistency?from=M&to=N`: the consistency proof between two checkpoints
//!   (hashes only: any internal token).
//!
//! Errors use the API envelope with a machine-readable `details.reason`.

use std::sync::Arc;

use aggregates::run::Run;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use engine::audit_log::store::StoreError;
use engine::audit_log::{AuditStore, Checkpoint};
use engine::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorCode, ErrorEnvelope};
use crate::api::extract::ApiQuery;

/// What the routes need.
#[derive(Clone)]
pub struct AuditLogState {
    pub store: AuditStore,
    pub engine: Arc<Engine>,
    /// The audit public key (x-only hex).
    pub public_key: String,
}

/// The routes with their full paths; merge into the internal router.
pub fn router(state: AuditLogState) -> Router {
    routes().with_state(state).into()
}

/// The routes, each at the path of its handler's `#[utoipa::path]` (which also puts it in the
/// OpenAPI document).
pub fn routes() -> OpenApiRouter<AuditLogState> {
    OpenApiRouter::new()
        .routes(routes!(key))
        .routes(routes!(latest))
        .routes(routes!(at_size))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::BeyondTree { asked, size } => ApiError::invalid(format!(
            "tree size {asked} is beyond the audit tree ({size} leaves)"
        ))
        .with_details(json!({"reason": "beyond_tree", "tree_size": size})),
        StoreError::Proof(p) => ApiError::invalid(p.to_string())
            .with_details(json!({"reason": "invalid_proof_request"})),
        StoreError::Journal(j) if j.is_unavailable() => ApiError::unavailable(&j),
        other => ApiError::internal(&other),
    }
}

fn no_checkpoint(what: String) -> ApiError {
    ApiError::not_found(what).with_details(json!({"reason": "checkpoint_not_found"}))
}

#[utoipa::path(get, path = "/internal/v1/audit/key", tag = "audit",
    responses(
        (status = 200, description = "The audit public key (x-only, hex), its signature scheme and the checkpoint schema", content_type = "application/json", body = Object),
        (status = 403, body = ErrorEnvelope)))]
pub(crate) async fn key(State(state): State<AuditLogState>, _caller: Caller) -> Json<Value> {
    Json(json!({
        "public_key": state.public_key,
        "scheme": engine::artifacts::signature::SIGNATURE_SCHEME,
        "checkpoint_schema": engine::audit_log::checkpoint::CHECKPOINT_SCHEMA,
    }))
}

#[utoipa::path(get, path = "/internal/v1/audit/checkpoints/latest", tag = "audit",
    responses(
        (status = 200, description = "The latest signed checkpoint (openagents.audit_checkpoint.v1, docs/audit.md)", content_type = "application/json", body = Object),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(crate) async fn latest(
    State(state): State<AuditLogState>,
    _caller: Caller,
) -> Result<Json<Checkpoint>, ApiError> {
    match state.store.latest_checkpoint().await.map_err(store_error)? {
        Some(cp) => Ok(Json(cp)),
        None => Err(no_checkpoint("no checkpoint has been taken yet".into())),
    }
}

fn parse_size(text: &str, field: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().map_err(|_| {
        ApiError::invalid(format!("{field} must be a non-negative integer"))
            .with_details(json!({"reason": "invalid_tree_size", "field": field}))
    })
}

#[utoipa::path(get, path = "/internal/v1/audit/checkpoints/{tree_size}", tag = "audit",
    params(("tree_size" = u64, Path, description = "Tree size of a stored checkpoint")),
    responses(
        (status = 200, description = "The signed checkpoint of exactly this tree size", content_type = "application/json", body = Object),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(crate) async fn at_size(
    State(state): State<AuditLogState>,
    _caller: Caller,
    Path(tree_size): Path<String>,
) -> Result<Json<Checkpoint>, ApiError> {
    let size = parse_size(&tree_size, "tree_size")?;
    match state.store.checkpoint_at(size).await.map_err(store_error)? {
        Some(cp) => Ok(Json(cp)),
        None => Err(no_checkpoint(format!("no checkpoint of tree size {size}"))),
    }
}

/// `?aggregate_type=&aggregate_id=&sequence=[&tree_size=]`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub tree_size: Option<u64>,
}

async fn may_read_event(
    state: &AuditLogState,
    caller: &Caller,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<(), ApiError> {
    if caller.claims.is_operator() {
        return Ok(());
    }
    let not_owner = || {
        ApiError::forbidden("the event does not belong to the principal")
            .with_details(json!({"reason": "not_owner"}))
    };
    match aggregate_type {
        "run" | "run_receipt" => {
            let Ok(id) = aggregates::ids::RunId::parse(aggregate_id) else {
                return Err(not_owner());
            };
            let (run, _) = state.engine.load::<Run>(id.as_str()).await?;
            let owned = run
                .owner
                .as_ref()
                .is_some_and(|owner| caller.principal.owns(owner));
            if !owned {
                return Err(not_owner());
            }
            caller.check_org(run.org_id.as_ref())
        }
        // Other aggregates (workers, payments, …) are the operator's to prove.
        _ => Err(not_owner()),
    }
}

#[utoipa::path(get, path = "/internal/v1/audit/proof/inclusion", tag = "audit",
    params(InclusionQuery),
    responses(
        (status = 200, description = "The event's leaf and its inclusion proof against the checkpoint (the latest unless tree_size names one); the event's owner or an operator token", content_type = "application/json", body = Object),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(crate) async fn inclusion(
    State(state): State<AuditLogState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<InclusionQuery>,
) -> Result<Json<Value>, ApiError> {
    may_read_event(&state, &caller, &query.aggregate_type, &query.aggregate_id).await?;
    let checkpoint = match query.tree_size {
        Some(size) => state.store.checkpoint_at(size).await.map_err(store_error)?,
        None => state.store.latest_checkpoint().await.map_err(store_error)?,
    }
    .ok_or_else(|| no_checkpoint("no such checkpoint".into()))?;
    let leaf = state
        .store
        .leaf_of_event(&query.aggregate_type, &query.aggregate_id, query.sequence)
        .await
        .map_err(store_error)?
        .filter(|leaf| leaf.leaf_index < checkpoint.tree_size)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "the event is not in the tree of that checkpoint (yet)",
            )
            .with_details(json!({"reason": "event_not_in_tree"}))
        })?;
    let proof = state
        .store
        .inclusion_proof(leaf.leaf_index, checkpoint.tree_size)
        .await
        .map_err(store_error)?;
    let leaf_hash = state
        .store
        .leaf_hashes(leaf.leaf_index, leaf.leaf_index + 1)
        .await
        .map_err(store_error)?
        .pop()
        .map(|(_, h)| hex::encode(h));
    Ok(Json(json!({
        "aggregate_type": leaf.aggregate_type,
        "aggregate_id": leaf.aggregate_id,
        "sequence": leaf.sequence,
        "leaf_index": leaf.leaf_index,
        "leaf_hash": leaf_hash,
        "tree_size": checkpoint.tree_size,
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "checkpoint": checkpoint,
    })))
}

/// `?from=M&to=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    pub from: u64,
    pub to: u64,
}

#[utoipa::path(get, path = "/internal/v1/audit/proof/consistency", tag = "audit",
    params(ConsistencyQuery),
    responses(
        (status = 200, description = "The consistency proof between the trees of two sizes, with their checkpoints", content_type = "application/json", body = Object),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(crate) async fn consistency(
    State(state): State<AuditLogState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<Value>, ApiError> {
    if query.from > query.to {
        return Err(ApiError::invalid("from must not exceed to")
            .with_details(json!({"reason": "invalid_tree_size", "field": "from"})));
    }
    let to = state
        .store
        .checkpoint_at(query.to)
        .await
        .map_err(store_error)?
        .ok_or_else(|| no_checkpoint(format!("no checkpoint of tree size {}", query.to)))?;
    let proof = state
        .store
        .consistency_proof(query.from, query.to)
        .await
        .map_err(store_error)?;
    let from = state
        .store
        .checkpoint_at(query.from)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "from": query.from,
        "to": query.to,
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "from_checkpoint": from,
        "to_checkpoint": to,
    })))
}

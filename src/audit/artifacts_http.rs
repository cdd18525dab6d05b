//! HTTP surfaces for one run's artifacts, mounted under `/internal/v1` behind the internal
//! signature auth ([`crate::api::compose`] puts every route merged into the internal router behind
//! it): `GET /internal/v1/runs/{run_id}/receipt` (`openagents.receipt.v1`, signed when a key is
//! configured), `GET …/replay` (REPLAY.jsonl v1, `application/x-ndjson`) and
//! `GET …/audit-bundle` (the run's audit bundle, streamed as it is written). Only the run's owner
//! may read them, with the run routes' rules (same user or guest scope, same tenant, and the
//! token's thread, like an optional `?thread_id=`, must be the run's). Errors use the API's
//! envelope `{ "error": { "code", "message", "details": { "reason" } } }`.

use std::sync::Arc;

use aggregates::ids::{RunId, ThreadId};
use aggregates::run::Run;
use aggregates::Timestamp;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use engine::artifacts::recorder::{receipt_for, RecordError};
use engine::artifacts::{load_run_record, render_replay, ReceiptSigner, RunRecord};
use engine::audit_log::AuditKey;
use engine::{Database, Engine};
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::ReaderStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::bundle::Scope;
use super::export::{export, Cut, ExportOptions};
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorCode, ErrorEnvelope};
use crate::api::extract::ApiQuery;

/// What the artifact routes need.
#[derive(Clone)]
pub struct ArtifactState {
    pub engine: Arc<Engine>,
    /// The journal's database (bundles read it directly, in commit order).
    pub database: Database,
    /// Signs receipts and bundle manifests when configured.
    pub signer: Option<ReceiptSigner>,
    /// The runtime's version, written into bundles.
    pub runtime_version: String,
    /// Signs the checkpoint a bundle is cut at (then every bundle holds the run as it is now);
    /// without it, bundles are cut at the latest stored checkpoint.
    pub audit_key: Option<AuditKey>,
}

/// The routes, each at the full `/internal/v1/...` path of its handler's `#[utoipa::path]`
/// (which also puts it in the OpenAPI document).
pub fn routes() -> OpenApiRouter<ArtifactState> {
    OpenApiRouter::new()
        .routes(routes!(receipt))
        .routes(routes!(replay))
        .routes(routes!(audit_bundle))
}

/// [`routes()`] with their state. Merge them into the internal router (`Server::merge_internal`,
/// as [`super::http::with_artifacts`] does): they rely on its signature auth and take a
/// [`Caller`].
pub fn router(state: ArtifactState) -> Router {
    routes().with_state(state).into()
}

/// `?thread_id=`: optional; when given it must be the run's thread.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArtifactQuery {
    /// When given, the run's thread.
    #[param(value_type = Option<crate::api::schema::ApiId>)]
    pub thread_id: Option<String>,
    /// Bundles only: also carry the consistency proof from this tree size to the bundle's
    /// checkpoint (for `audit verify --checkpoint OLD.json`).
    pub consistency_from: Option<u64>,
}

fn not_owner() -> ApiError {
    ApiError::forbidden("run does not belong to principal")
        .with_details(json!({ "reason": "not_owner" }))
}

/// Parses the id, loads the run and checks that `caller` may read its artifacts.
///
/// # Errors
/// `400 invalid_run_id`/`invalid_query`, `404 run_not_found`, `403 not_owner`/`claim_mismatch`/
/// `org_mismatch`, `503` when the journal is unavailable.
async fn authorize(
    state: &ArtifactState,
    caller: &Caller,
    run_id: &str,
    query: &ArtifactQuery,
) -> Result<(RunId, RunRecord), ApiError> {
    let id = RunId::parse(run_id).map_err(|e| {
        ApiError::invalid(e.to_string())
            .with_details(json!({ "reason": "invalid_run_id", "field": "run_id" }))
    })?;
    let thread = query
        .thread_id
        .as_deref()
        .map(ThreadId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_id(&e))?;
    let (summary, _) = state.engine.load::<Run>(id.as_str()).await?;
    if !summary.exists() {
        return Err(run_not_found());
    }
    let owned = summary
        .owner
        .as_ref()
        .is_some_and(|owner| caller.principal.owns(owner));
    if !owned {
        return Err(not_owner());
    }
    if let Some(thread) = &thread {
        if summary.thread_id.as_ref() != Some(thread) {
            return Err(not_owner());
        }
    }
    if let Some(run_thread) = &summary.thread_id {
        caller.check_thread(run_thread)?;
    }
    caller.check_org(summary.org_id.as_ref())?;
    match load_run_record(&state.engine, id.as_str()).await {
        Ok(Some(record)) => Ok((id, record)),
        Ok(None) => Err(run_not_found()),
        Err(RecordError::Unavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InternalError,
            "the journal is unavailable; retry",
        )
        .with_details(json!({ "reason": "journal_unavailable", "retryable": true }))),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

fn run_not_found() -> ApiError {
    ApiError::not_found("run not found").with_details(json!({ "reason": "run_not_found" }))
}

/// The run's `openagents.receipt.v1` (signed when the runtime has a receipt key).
#[utoipa::path(get, path = "/internal/v1/runs/{run_id}/receipt", tag = "artifacts",
    params(("run_id" = crate::api::schema::ApiId, Path), ArtifactQuery),
    responses(
        (status = 200, description = "The receipt (docs/receipts-and-replay.md)", content_type = "application/json", body = Object),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub(crate) async fn receipt(
    State(state): State<ArtifactState>,
    caller: Caller,
    Path(run_id): Path<String>,
    ApiQuery(query): ApiQuery<ArtifactQuery>,
) -> Result<Response, ApiError> {
    let (_, record) = authorize(&state, &caller, &run_id, &query).await?;
    Ok(Json(receipt_for(&record, state.signer.as_ref(), &[])).into_response())
}

/// The run's REPLAY.jsonl v1, one JSON object per line.
#[utoipa::path(get, path = "/internal/v1/runs/{run_id}/replay", tag = "artifacts",
    params(("run_id" = crate::api::schema::ApiId, Path), ArtifactQuery),
    responses(
        (status = 200, description = "REPLAY.jsonl v1 (docs/receipts-and-replay.md)", content_type = "application/x-ndjson", body = String),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub(crate) async fn replay(
    State(state): State<ArtifactState>,
    caller: Caller,
    Path(run_id): Path<String>,
    ApiQuery(query): ApiQuery<ArtifactQuery>,
) -> Result<Response, ApiError> {
    let (_, record) = authorize(&state, &caller, &run_id, &query).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        render_replay(&record),
    )
        .into_response())
}

/// The run's audit bundle (JSON lines, streamed as it is written; verify it with
/// `openagents-runtime audit verify`).
#[utoipa::path(get, path = "/internal/v1/runs/{run_id}/audit-bundle", tag = "artifacts",
    params(("run_id" = crate::api::schema::ApiId, Path), ArtifactQuery),
    responses(
        (status = 200, description = "The audit bundle (docs/receipts-and-replay.md)", content_type = "application/x-ndjson", body = String),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub(crate) async fn audit_bundle(
    State(state): State<ArtifactState>,
    caller: Caller,
    Path(run_id): Path<String>,
    ApiQuery(query): ApiQuery<ArtifactQuery>,
) -> Result<Response, ApiError> {
    let (id, _) = authorize(&state, &caller, &run_id, &query).await?;
    // The exporter writes into one end of an in-memory pipe while the response streams the other;
    // a slow client slows the export (bounded buffer), a gone client ends it with a write error.
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let options = ExportOptions {
        scope: Scope::Run(id.clone()),
        signer: state.signer.clone(),
        runtime_version: state.runtime_version.clone(),
        exported_at: Timestamp::from_datetime(chrono::Utc::now()),
        progress: false,
        verify_stored: true,
        cut: match &state.audit_key {
            Some(key) => Cut::Fresh(key.clone()),
            None => Cut::Latest,
        },
        consistency_from: query.consistency_from,
    };
    let database = state.database.clone();
    tokio::spawn(async move {
        if let Err(e) = export(&database, &options, writer).await {
            tracing::warn!(error.message = %e, run_id = %id, "audit bundle download ended early");
        }
    });
    let filename = format!("attachment; filename=\"audit-{run_id}.jsonl\"");
    let disposition =
        HeaderValue::from_str(&filename).unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response())
}

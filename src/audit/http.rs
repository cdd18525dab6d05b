//! HTTP surfaces for one run's artifacts, to be mounted under `/internal/v1` behind the internal
//! signature auth: `GET /internal/v1/runs/{run_id}/receipt` (`openagents.receipt.v1`, signed when
//! a key is configured), `GET …/replay` (REPLAY.jsonl v1, `application/x-ndjson`) and
//! `GET …/audit-bundle` (the run's audit bundle, streamed as it is written). Errors use the API's
//! envelope `{ "error": { "code", "message", "details": { "reason" } } }`.

use std::sync::Arc;

use aggregates::ids::RunId;
use aggregates::Timestamp;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use engine::artifacts::recorder::{receipt_for, RecordError};
use engine::artifacts::{load_run_record, render_replay, ReceiptSigner, RunRecord};
use engine::{Database, Engine};
use serde_json::json;
use tokio_util::io::ReaderStream;

use super::bundle::Scope;
use super::export::{export, ExportOptions};

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
}

/// The routes, with their full `/internal/v1/...` paths.
pub fn router(state: ArtifactState) -> Router {
    Router::new()
        .route("/internal/v1/runs/{run_id}/receipt", get(receipt))
        .route("/internal/v1/runs/{run_id}/replay", get(replay))
        .route("/internal/v1/runs/{run_id}/audit-bundle", get(audit_bundle))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, reason: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message, "details": {"reason": reason}}})),
    )
        .into_response()
}

async fn load(state: &ArtifactState, run_id: &str) -> Result<(RunId, RunRecord), Response> {
    let id = RunId::parse(run_id).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "invalid_run_id",
            &e.to_string(),
        )
    })?;
    match load_run_record(&state.engine, id.as_str()).await {
        Ok(Some(record)) => Ok((id, record)),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "run_not_found",
            "run not found",
        )),
        Err(RecordError::Unavailable) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            "journal_unavailable",
            "the journal is unavailable; retry",
        )),
        Err(e) => {
            tracing::error!(error.message = %e, run_id = %id, "run artifacts failed");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal",
                "internal error",
            ))
        }
    }
}

#[tracing::instrument(skip_all, fields(run_id = %run_id))]
async fn receipt(State(state): State<ArtifactState>, Path(run_id): Path<String>) -> Response {
    match load(&state, &run_id).await {
        Ok((_, record)) => Json(receipt_for(&record, state.signer.as_ref(), &[])).into_response(),
        Err(response) => response,
    }
}

#[tracing::instrument(skip_all, fields(run_id = %run_id))]
async fn replay(State(state): State<ArtifactState>, Path(run_id): Path<String>) -> Response {
    match load(&state, &run_id).await {
        Ok((_, record)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )],
            render_replay(&record),
        )
            .into_response(),
        Err(response) => response,
    }
}

#[tracing::instrument(skip_all, fields(run_id = %run_id))]
async fn audit_bundle(State(state): State<ArtifactState>, Path(run_id): Path<String>) -> Response {
    let id = match load(&state, &run_id).await {
        Ok((id, _)) => id,
        Err(response) => return response,
    };
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
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response()
}

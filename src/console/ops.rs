//! `GET /ops/v1/status`: one JSON snapshot of this node's operational state for operators (and
//! the console's operations view) — projector positions and lag, topic heads, retention floors
//! and epochs, sync sockets, readiness. Documented in docs/console.md; read by an operator sync
//! token (`oa_role: "operator"`), never by scraping `/metrics`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use engine::Journal;
use serde::{Deserialize, Serialize};

use super::error::ConsoleError;
use super::Console;

/// Lag is counted up to this many events (beyond it the projector is simply "far behind").
pub const LAG_COUNT_CAP: u64 = 1_000_000;

/// The whole snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpsStatus {
    /// RFC 3339, when this snapshot was taken.
    pub generated_at: String,
    pub version: String,
    /// `postgres` or `sqlite`.
    pub journal_backend: String,
    pub readiness: ReadinessView,
    pub journal: JournalView,
    pub projectors: Vec<ProjectorView>,
    pub topics: Vec<TopicView>,
    pub sync: SyncView,
}

/// `/readyz`'s verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessView {
    /// `ready` or `not_ready`.
    pub status: String,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalView {
    /// The highest journal position allocated so far (committed or in flight).
    pub head_position: u64,
}

/// One projector's checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectorView {
    pub projector: String,
    pub topic: String,
    pub projection_version: u32,
    /// The journal position the projector has folded through.
    pub position: u64,
    /// Journal events after `position` (committed or in flight), counted up to
    /// [`LAG_COUNT_CAP`].
    pub lag_events: u64,
    pub events_projected: u64,
    /// The process holding the projector's lease, if any holds it now.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<String>,
    pub rebuild_requested: bool,
    /// A full rebuild in progress: events folded so far.
    pub rebuild_events: Option<u64>,
    pub last_rebuilt_at: Option<String>,
    pub updated_at: Option<String>,
}

/// One sync topic's stream state and policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicView {
    pub topic: String,
    pub head_watermark: u64,
    /// Cursors strictly below this are `stale_cursor`.
    pub retention_floor: u64,
    pub epoch: u64,
    pub epoch_start: u64,
    pub retention_secs: Option<u64>,
    pub replay_budget: Option<u64>,
}

/// This node's Khala sockets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    /// Sync sessions connected to this node now.
    pub sockets_open: u64,
    pub sockets_total: u64,
    pub max_connections: usize,
    pub batches_sent: u64,
    pub updates_sent: u64,
    pub slow_consumer_throttles: u64,
    pub slow_consumer_disconnects: u64,
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// `GET /ops/v1/status` with `Authorization: Bearer <operator sync token>`.
///
/// 401 `unauthorized` without a valid token, 403 `operator_required` for other principals, 503
/// `internal` when the store cannot be read.
pub async fn status(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    super::login::operator(&console, &headers)?;
    let snapshot = snapshot(&console).await?;
    let mut response = Json(snapshot).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Takes the snapshot.
///
/// # Errors
/// [`ConsoleError::Unavailable`] when the journal or the sync store cannot be read.
pub async fn snapshot(console: &Console) -> Result<OpsStatus, ConsoleError> {
    let app = &console.app;
    let store = &console.lane.store;
    let gateway = &console.lane.gateway;
    let journal = app.database().journal();
    let readiness = match crate::api::health::readiness(app).await {
        Ok(()) => ReadinessView {
            status: "ready".into(),
            reason: None,
        },
        Err(reason) => ReadinessView {
            status: "not_ready".into(),
            reason: Some(reason),
        },
    };
    let head = journal.head().await.map_err(|e| {
        tracing::warn!(error.message = %e, "ops: journal head unreadable");
        ConsoleError::Unavailable("journal unavailable")
    })?;
    let checkpoints = store.checkpoints().await.map_err(|e| {
        tracing::warn!(error.message = %e, "ops: checkpoints unreadable");
        ConsoleError::Unavailable("sync store unavailable")
    })?;
    let now_ms = Utc::now().timestamp_millis();
    let mut projectors = Vec::with_capacity(checkpoints.len());
    for checkpoint in checkpoints {
        let lag_events = journal
            .count_after(checkpoint.cursor, LAG_COUNT_CAP)
            .await
            .map_err(|e| {
                tracing::warn!(error.message = %e, "ops: lag unreadable");
                ConsoleError::Unavailable("journal unavailable")
            })?;
        let held = checkpoint.lease_owner.is_some() && checkpoint.lease_expires_at_ms > now_ms;
        projectors.push(ProjectorView {
            projector: checkpoint.projector,
            topic: checkpoint.topic,
            projection_version: checkpoint.projection_version,
            position: checkpoint.cursor.position(),
            lag_events,
            events_projected: checkpoint.events_projected,
            lease_owner: if held { checkpoint.lease_owner } else { None },
            lease_expires_at: if held {
                rfc3339_ms(checkpoint.lease_expires_at_ms)
            } else {
                None
            },
            rebuild_requested: checkpoint.rebuild_requested,
            rebuild_events: checkpoint.rebuild.map(|r| r.events),
            last_rebuilt_at: checkpoint.last_rebuilt_at_ms.and_then(rfc3339_ms),
            updated_at: rfc3339_ms(checkpoint.updated_at_ms),
        });
    }
    let names: Vec<&str> = gateway.known_topics().iter().map(String::as_str).collect();
    let states = store.topic_states(&names).await.map_err(|e| {
        tracing::warn!(error.message = %e, "ops: topic states unreadable");
        ConsoleError::Unavailable("sync store unavailable")
    })?;
    let topics = states
        .into_iter()
        .map(|state| {
            let policy = gateway.config().policy(&state.topic);
            TopicView {
                retention_secs: policy.map(|p| p.retention.as_secs()),
                replay_budget: policy.map(|p| p.replay_budget),
                topic: state.topic,
                head_watermark: state.head_watermark,
                retention_floor: state.retention_floor,
                epoch: state.epoch,
                epoch_start: state.epoch_start,
            }
        })
        .collect();
    let stats = gateway.stats_snapshot();
    Ok(OpsStatus {
        generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        version: crate::VERSION.into(),
        journal_backend: app.database().backend_name().into(),
        readiness,
        journal: JournalView {
            head_position: head.max_position,
        },
        projectors,
        topics,
        sync: SyncView {
            sockets_open: stats.sockets_open,
            sockets_total: stats.sockets_total,
            max_connections: gateway.config().max_connections,
            batches_sent: stats.batches_sent,
            updates_sent: stats.updates_sent,
            slow_consumer_throttles: stats.slow_consumer_throttles,
            slow_consumer_disconnects: stats.slow_consumer_disconnects,
        },
    })
}

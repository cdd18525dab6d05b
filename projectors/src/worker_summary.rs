//! Worker summaries: topic `runtime.codex_worker_summaries`, one document per worker,
//! `runtime/codex_worker_summary:<worker_id>`, owned by the worker's owner (and tenant). The
//! shape follows the original's `worker_summary` (`shared/compat/codex-worker-events-v1.json`)
//! with additive fields. Every worker event moves `latest_seq`, so every one is a change.

use aggregates::worker::{WorkerEvent, WorkerStatus};
use aggregates::Timestamp;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{DocOwner, ProjectedEvent, Projection, ProjectionError, RuntimeSource};

pub const TOPIC: &str = "runtime.codex_worker_summaries";

/// `runtime/codex_worker_summary:<worker_id>`.
pub fn doc_key(worker_id: &str) -> String {
    format!("runtime/codex_worker_summary:{worker_id}")
}

/// The original's `khala_projection` block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KhalaProjection {
    /// `runtime:codex_worker:<worker_id>`.
    pub document_id: String,
    pub last_runtime_seq: u64,
    /// Always 0: a document is written in the same transaction as the checkpoint that covers it.
    pub lag_events: u64,
    pub status: String,
    /// `khala.v1`.
    pub projection_version: String,
    pub last_projected_at: String,
}

/// The worker summary document. Field order is the payload's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSummaryDoc {
    pub worker_id: String,
    /// `starting`, `running`, `stopping`, `stopped`, `failed`, `lost`.
    pub status: String,
    pub latest_seq: u64,
    pub workspace_ref: Option<String>,
    pub codex_home_ref: Option<String>,
    pub adapter: String,
    /// `healthy` while the worker holds a lease (starting, running, stopping), `lost` once it
    /// expired, `stopped` after a stop or failure. Decided by events only, never the wall clock.
    pub heartbeat_state: String,
    pub last_heartbeat_at: Option<String>,
    pub started_at: Option<String>,
    pub metadata: Map<String, Value>,
    pub owner_user_id: Option<String>,
    pub owner_guest_scope: Option<String>,
    pub org_id: Option<String>,
    pub lease_expires_at: String,
    pub stopped_at: Option<String>,
    pub status_reason: Option<String>,
    pub last_event_type: String,
    pub updated_at: String,
    pub khala_projection: KhalaProjection,
    pub runtime_source: RuntimeSource,
    pub projection_version: u32,
    pub projected_at: String,
}

fn heartbeat_state(status: WorkerStatus) -> &'static str {
    match status {
        WorkerStatus::Starting | WorkerStatus::Running | WorkerStatus::Stopping => "healthy",
        WorkerStatus::Lost => "lost",
        WorkerStatus::Stopped | WorkerStatus::Failed => "stopped",
    }
}

/// The worker summaries read model.
pub struct WorkerSummaries;

impl Projection for WorkerSummaries {
    type Doc = WorkerSummaryDoc;
    const NAME: &'static str = "codex_worker_summaries";
    const TOPIC: &'static str = TOPIC;
    const TABLE: &'static str = "sync_codex_worker_summaries";
    const VERSION: u32 = 1;
    const AGGREGATE_TYPES: &'static [&'static str] = &["codex_worker"];

    fn doc_key(event: &SerializedEvent) -> Option<String> {
        Some(doc_key(&event.aggregate_id))
    }

    fn apply(
        slot: &mut Option<WorkerSummaryDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let prior = slot.take();
        let ts = |t: Timestamp| t.to_rfc3339();
        let worker_event: WorkerEvent = event.decode()?;
        let at = worker_event.at();
        let mut doc = match (&worker_event, prior) {
            (
                WorkerEvent::WorkerRegistered {
                    worker_id,
                    owner,
                    org_id,
                    adapter,
                    workspace_ref,
                    codex_home_ref,
                    metadata,
                    lease_expires_at,
                    ..
                },
                _,
            ) => {
                let owner = DocOwner::of(Some(owner), org_id.as_ref().map(|o| o.as_str()));
                WorkerSummaryDoc {
                    worker_id: worker_id.to_string(),
                    status: WorkerStatus::Starting.as_str().to_owned(),
                    latest_seq: 0,
                    workspace_ref: workspace_ref.clone(),
                    codex_home_ref: codex_home_ref.clone(),
                    adapter: adapter.clone(),
                    heartbeat_state: String::new(),
                    last_heartbeat_at: None,
                    started_at: Some(ts(at)),
                    metadata: metadata.clone(),
                    owner_user_id: owner.user_id,
                    owner_guest_scope: owner.guest_scope,
                    org_id: owner.org_id,
                    lease_expires_at: ts(*lease_expires_at),
                    stopped_at: None,
                    status_reason: None,
                    last_event_type: String::new(),
                    updated_at: ts(at),
                    khala_projection: KhalaProjection {
                        document_id: format!("runtime:codex_worker:{worker_id}"),
                        last_runtime_seq: 0,
                        lag_events: 0,
                        status: String::new(),
                        projection_version: "khala.v1".to_owned(),
                        last_projected_at: String::new(),
                    },
                    runtime_source: event.source(),
                    projection_version: Self::VERSION,
                    projected_at: String::new(),
                }
            }
            (_, Some(prior)) => prior,
            (_, None) => {
                return Err(ProjectionError::Inconsistent {
                    at: format!(
                        "codex_worker/{}#{}",
                        event.event.aggregate_id, event.event.sequence
                    ),
                    message: "event before the worker's registration".into(),
                })
            }
        };
        if let Some(status) = worker_event.new_status() {
            doc.status = status.as_str().to_owned();
        }
        match &worker_event {
            WorkerEvent::WorkerRegistered { .. } => {}
            WorkerEvent::WorkerReattached {
                lease_expires_at, ..
            } => {
                doc.lease_expires_at = ts(*lease_expires_at);
                doc.started_at = Some(ts(at));
                doc.stopped_at = None;
                doc.status_reason = Some("reattached".to_owned());
            }
            WorkerEvent::WorkerStarted {
                reason,
                lease_expires_at,
                ..
            } => {
                doc.lease_expires_at = ts(*lease_expires_at);
                doc.last_heartbeat_at = Some(ts(at));
                doc.status_reason = Some(reason.clone());
            }
            WorkerEvent::LeaseRenewed {
                lease_expires_at, ..
            } => {
                doc.lease_expires_at = ts(*lease_expires_at);
                doc.last_heartbeat_at = Some(ts(at));
            }
            WorkerEvent::RequestReceived { .. } | WorkerEvent::EventReported { .. } => {}
            WorkerEvent::WorkerStopping { reason, .. } => {
                doc.status_reason = Some(reason.clone());
            }
            WorkerEvent::WorkerStopped { reason, .. }
            | WorkerEvent::WorkerFailed { reason, .. } => {
                doc.stopped_at = Some(ts(at));
                doc.status_reason = Some(reason.clone());
            }
            WorkerEvent::WorkerLost { .. } => {
                doc.stopped_at = Some(ts(at));
                doc.status_reason = Some("lease_expired".to_owned());
            }
        }
        let status = WorkerStatus::parse(&doc.status).unwrap_or(WorkerStatus::Starting);
        let projected_at = ts(event.recorded_at);
        doc.latest_seq = event.event.sequence as u64;
        doc.heartbeat_state = heartbeat_state(status).to_owned();
        doc.last_event_type = if matches!(worker_event, WorkerEvent::EventReported { .. }) {
            worker_event.stream_event_type()
        } else {
            worker_event.event_type()
        };
        doc.updated_at = ts(at);
        doc.khala_projection.last_runtime_seq = doc.latest_seq;
        doc.khala_projection.status = doc.status.clone();
        doc.khala_projection.last_projected_at = projected_at.clone();
        doc.runtime_source = event.source();
        doc.projection_version = Self::VERSION;
        doc.projected_at = projected_at;
        *slot = Some(doc);
        Ok(true)
    }

    fn owner(doc: &WorkerSummaryDoc) -> DocOwner {
        DocOwner {
            user_id: doc.owner_user_id.clone(),
            guest_scope: doc.owner_guest_scope.clone(),
            org_id: doc.org_id.clone(),
        }
    }

    fn projected_at(doc: &WorkerSummaryDoc) -> Timestamp {
        doc.projected_at.parse().unwrap_or(Timestamp::EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{stored, ts};
    use serde_json::json;

    #[test]
    fn folds_a_worker_lifecycle() {
        let events = vec![
            stored(
                "codex_worker",
                "w1",
                1,
                "worker.registered",
                json!({"WorkerRegistered": {"worker_id": "w1", "owner": {"kind": "guest", "id": "g1"},
                    "adapter": "desktop", "workspace_ref": "ws", "codex_home_ref": null,
                    "metadata": {}, "lease_expires_at": ts(30), "registered_at": ts(0)}}),
                0,
            ),
            stored(
                "codex_worker",
                "w1",
                2,
                "worker.started",
                json!({"WorkerStarted": {"reason": "heartbeat", "lease_expires_at": ts(31),
                    "started_at": ts(1)}}),
                1,
            ),
            stored(
                "codex_worker",
                "w1",
                3,
                "worker.event",
                json!({"EventReported": {"event_type": "worker.turn", "payload": {"a": 1},
                    "reported_at": ts(2)}}),
                2,
            ),
            stored(
                "codex_worker",
                "w1",
                4,
                "worker.lost",
                json!({"WorkerLost": {"lease_expired_at": ts(31), "detected_at": ts(40)}}),
                40,
            ),
        ];
        let docs = crate::model::fold::<WorkerSummaries>(&events).unwrap();
        let (doc, version) = &docs["runtime/codex_worker_summary:w1"];
        assert_eq!(*version, 4);
        assert_eq!(doc.status, "lost");
        assert_eq!(doc.heartbeat_state, "lost");
        assert_eq!(doc.latest_seq, 4);
        assert_eq!(doc.last_heartbeat_at.as_deref(), Some(ts(1).as_str()));
        assert_eq!(doc.owner_guest_scope.as_deref(), Some("g1"));
        assert_eq!(doc.khala_projection.document_id, "runtime:codex_worker:w1");
        assert_eq!(doc.khala_projection.last_runtime_seq, 4);
        assert_eq!(doc.stopped_at.as_deref(), Some(ts(40).as_str()));
    }
}

//! The worker event stream: topic `runtime.codex_worker_events`, one document per worker event,
//! `runtime/codex_worker_event:<worker_id>:<seq>` (version 1, never changed), carrying the
//! event as the worker stream (SSE) shows it. Owned by the worker's owner, read from the
//! worker's birth record. Documents are a history: they are pruned with the stream.

use aggregates::worker::WorkerEvent;
use aggregates::Timestamp;
use cqrs_es::persist::SerializedEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{DocOwner, ProjectedEvent, Projection, ProjectionError, RuntimeSource};

pub const TOPIC: &str = "runtime.codex_worker_events";

/// `runtime/codex_worker_event:<worker_id>:<seq>`.
pub fn doc_key(worker_id: &str, seq: u64) -> String {
    format!("runtime/codex_worker_event:{worker_id}:{seq}")
}

/// One worker event. Field order is the payload's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerEventDoc {
    pub worker_id: String,
    pub seq: u64,
    pub event_type: String,
    pub payload: Value,
    pub occurred_at: String,
    pub owner_user_id: Option<String>,
    pub owner_guest_scope: Option<String>,
    pub org_id: Option<String>,
    pub runtime_source: RuntimeSource,
    pub projection_version: u32,
    pub projected_at: String,
}

/// The worker events read model.
pub struct WorkerEvents;

impl Projection for WorkerEvents {
    type Doc = WorkerEventDoc;
    const NAME: &'static str = "codex_worker_events";
    const TOPIC: &'static str = TOPIC;
    const TABLE: &'static str = "sync_codex_worker_events";
    const VERSION: u32 = 1;
    const AGGREGATE_TYPES: &'static [&'static str] = &["codex_worker"];
    const DOCS_ARE_EVENTS: bool = true;
    const NEEDS_BIRTH: bool = true;

    fn doc_key(event: &SerializedEvent) -> Option<String> {
        Some(doc_key(&event.aggregate_id, event.sequence as u64))
    }

    fn apply(
        slot: &mut Option<WorkerEventDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let worker_event: WorkerEvent = event.decode()?;
        let birth = match (&worker_event, event.birth) {
            (WorkerEvent::WorkerRegistered { .. }, _) => worker_event.clone(),
            (_, Some(birth)) => crate::model::decode_event(birth)?,
            (_, None) => {
                return Err(ProjectionError::Inconsistent {
                    at: format!(
                        "codex_worker/{}#{}",
                        event.event.aggregate_id, event.event.sequence
                    ),
                    message: "the worker has no registration record".into(),
                })
            }
        };
        let WorkerEvent::WorkerRegistered { owner, org_id, .. } = birth else {
            return Err(ProjectionError::Inconsistent {
                at: format!("codex_worker/{}#1", event.event.aggregate_id),
                message: "the worker's first event is not its registration".into(),
            });
        };
        let owner = DocOwner::of(Some(&owner), org_id.as_ref().map(|o| o.as_str()));
        *slot = Some(WorkerEventDoc {
            worker_id: event.event.aggregate_id.clone(),
            seq: event.event.sequence as u64,
            event_type: worker_event.stream_event_type(),
            payload: worker_event.stream_payload(),
            occurred_at: worker_event.at().to_rfc3339(),
            owner_user_id: owner.user_id,
            owner_guest_scope: owner.guest_scope,
            org_id: owner.org_id,
            runtime_source: RuntimeSource::of(event.event),
            projection_version: Self::VERSION,
            projected_at: event.recorded_at.to_rfc3339(),
        });
        Ok(true)
    }

    fn owner(doc: &WorkerEventDoc) -> DocOwner {
        DocOwner {
            user_id: doc.owner_user_id.clone(),
            guest_scope: doc.owner_guest_scope.clone(),
            org_id: doc.org_id.clone(),
        }
    }

    fn projected_at(doc: &WorkerEventDoc) -> Timestamp {
        doc.projected_at.parse().unwrap_or(Timestamp::EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{stored, ts};
    use serde_json::json;

    #[test]
    fn one_document_per_event_owned_by_the_registered_owner() {
        let events = vec![
            stored(
                "codex_worker",
                "w1",
                1,
                "worker.registered",
                json!({"WorkerRegistered": {"worker_id": "w1", "owner": {"kind": "user", "id": "5"},
                    "org_id": "org_x", "adapter": "desktop", "workspace_ref": null,
                    "codex_home_ref": null, "metadata": {}, "lease_expires_at": ts(30),
                    "registered_at": ts(0)}}),
                0,
            ),
            stored(
                "codex_worker",
                "w1",
                2,
                "worker.event",
                json!({"EventReported": {"event_type": "worker.turn.started",
                    "payload": {"method": "turn/started"}, "reported_at": ts(2)}}),
                2,
            ),
        ];
        let docs = crate::model::fold::<WorkerEvents>(&events).unwrap();
        assert_eq!(docs.len(), 2);
        let (doc, version) = &docs["runtime/codex_worker_event:w1:2"];
        assert_eq!(*version, 1);
        assert_eq!(doc.event_type, "worker.turn.started");
        assert_eq!(doc.payload, json!({"method": "turn/started"}));
        assert_eq!(doc.owner_user_id.as_deref(), Some("5"));
        assert_eq!(doc.org_id.as_deref(), Some("org_x"));
        assert_eq!(doc.seq, 2);
    }
}

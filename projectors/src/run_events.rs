//! The run event stream: topic `runtime.run_events`, one document per event of a run's runtime
//! event stream, `runtime/run_event:<run_id>:<seq>` (version 1, never changed), carrying the
//! event as the run's SSE stream shows it (`event_type` and `payload`: `run.started`, each
//! frame, `run.cancel_requested`, `run.finished`). A run's live transcript for clients such as
//! the console. Owned by the run's owner (and tenant), read from the run's birth record.
//! Documents are a history: they are pruned with the stream.

use aggregates::run::{Run, RunEvent, LEGACY_RUN_EVENT_VERSION};
use aggregates::{RuntimeAggregate, Timestamp};
use cqrs_es::persist::SerializedEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{DocOwner, ProjectedEvent, Projection, ProjectionError, RuntimeSource};

pub const TOPIC: &str = "runtime.run_events";

/// `runtime/run_event:<run_id>:<seq>`.
pub fn doc_key(run_id: &str, seq: u64) -> String {
    format!("runtime/run_event:{run_id}:{seq}")
}

/// One run event. Field order is the payload's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEventDoc {
    pub run_id: String,
    pub thread_id: String,
    /// The run's `seq` of this event (journal sequence − 1; the birth record has none).
    pub seq: u64,
    pub event_type: String,
    pub payload: Map<String, Value>,
    pub occurred_at: String,
    pub owner_user_id: Option<String>,
    pub owner_guest_scope: Option<String>,
    pub org_id: Option<String>,
    pub runtime_source: RuntimeSource,
    pub projection_version: u32,
    pub projected_at: String,
}

/// The run events read model.
pub struct RunEvents;

fn current(event: &SerializedEvent) -> SerializedEvent {
    if event.event_version == LEGACY_RUN_EVENT_VERSION {
        <Run as RuntimeAggregate>::upcast(event.clone())
    } else {
        event.clone()
    }
}

impl Projection for RunEvents {
    type Doc = RunEventDoc;
    const NAME: &'static str = "run_events";
    const TOPIC: &'static str = TOPIC;
    const TABLE: &'static str = "sync_run_events";
    const VERSION: u32 = 1;
    const AGGREGATE_TYPES: &'static [&'static str] = &["run"];
    const DOCS_ARE_EVENTS: bool = true;
    const NEEDS_BIRTH: bool = true;

    fn upcast(event: &SerializedEvent) -> Option<SerializedEvent> {
        (event.event_version == LEGACY_RUN_EVENT_VERSION).then(|| current(event))
    }

    fn doc_key(event: &SerializedEvent) -> Option<String> {
        // The birth record (sequence 1) is not part of the run's event stream.
        (event.sequence > 1).then(|| doc_key(&event.aggregate_id, event.sequence as u64 - 1))
    }

    fn apply(
        slot: &mut Option<RunEventDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let run_event: RunEvent = event.decode()?;
        let Some(view) = run_event.runtime_view() else {
            return Ok(false);
        };
        let inconsistent = |message: &str| ProjectionError::Inconsistent {
            at: format!("run/{}#{}", event.event.aggregate_id, event.event.sequence),
            message: message.into(),
        };
        let birth = event
            .birth
            .ok_or_else(|| inconsistent("the run has no birth record"))?;
        let RunEvent::RunCreated {
            thread_id,
            owner,
            org_id,
            ..
        } = crate::model::decode_event(&current(birth))?
        else {
            return Err(inconsistent("the run's first event is not its creation"));
        };
        let owner = DocOwner::of(Some(&owner), org_id.as_ref().map(|o| o.as_str()));
        *slot = Some(RunEventDoc {
            run_id: event.event.aggregate_id.clone(),
            thread_id: thread_id.to_string(),
            seq: event.event.sequence as u64 - 1,
            event_type: view.event_type,
            payload: view.payload,
            occurred_at: run_event.at().to_rfc3339(),
            owner_user_id: owner.user_id,
            owner_guest_scope: owner.guest_scope,
            org_id: owner.org_id,
            runtime_source: RuntimeSource::of(event.event),
            projection_version: Self::VERSION,
            projected_at: event.recorded_at.to_rfc3339(),
        });
        Ok(true)
    }

    fn owner(doc: &RunEventDoc) -> DocOwner {
        DocOwner {
            user_id: doc.owner_user_id.clone(),
            guest_scope: doc.owner_guest_scope.clone(),
            org_id: doc.org_id.clone(),
        }
    }

    fn projected_at(doc: &RunEventDoc) -> Timestamp {
        doc.projected_at.parse().unwrap_or(Timestamp::EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{stored, ts};
    use serde_json::json;

    #[test]
    fn one_document_per_stream_event_owned_by_the_runs_owner() {
        let events = vec![
            stored(
                "run",
                "r1",
                1,
                "run.created",
                json!({"RunCreated": {"run_id": "r1", "thread_id": "t1",
                    "owner": {"kind": "user", "id": "5"}, "org_id": "org_x",
                    "metadata": {}, "created_at": ts(0)}}),
                0,
            ),
            stored(
                "run",
                "r1",
                2,
                "run.started",
                json!({"RunStarted": {"source": "api", "started_at": ts(1)}}),
                1,
            ),
            stored(
                "run",
                "r1",
                3,
                "run.frame_appended",
                json!({"FrameAppended": {"frame_id": "f1", "frame_type": "text_delta",
                    "payload": {"delta": "Hello"}, "payload_hash": "sha256:00",
                    "occurred_at": null, "appended_at": ts(2)}}),
                2,
            ),
        ];
        let docs = crate::model::fold::<RunEvents>(&events).unwrap();
        assert_eq!(
            docs.keys().collect::<Vec<_>>(),
            ["runtime/run_event:r1:1", "runtime/run_event:r1:2"]
        );
        let (started, version) = &docs["runtime/run_event:r1:1"];
        assert_eq!(*version, 1);
        assert_eq!(started.event_type, "run.started");
        assert_eq!(started.seq, 1);
        assert_eq!(started.thread_id, "t1");
        let (frame, _) = &docs["runtime/run_event:r1:2"];
        assert_eq!(frame.event_type, "text_delta");
        assert_eq!(
            Value::Object(frame.payload.clone()),
            json!({"delta": "Hello"})
        );
        assert_eq!(frame.owner_user_id.as_deref(), Some("5"));
        assert_eq!(frame.org_id.as_deref(), Some("org_x"));
        assert_eq!(frame.occurred_at, ts(2));
    }
}

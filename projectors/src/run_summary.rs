//! Run summaries: topic `runtime.run_summaries`, one document per run,
//! `runtime/run_summary:<run_id>`, owned by the run's owner (and tenant). Folded from the run's
//! own events and, once the run is terminal, its recorded receipt (`run_receipt` aggregate).
//! Large metadata is not repeated here: see [`crate::run_metadata`].

use aggregates::receipt::ReceiptEvent;
use aggregates::run::{Run, RunEvent, RunStatus, LEGACY_RUN_EVENT_VERSION};
use aggregates::{RuntimeAggregate, Timestamp};
use cqrs_es::persist::SerializedEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{DocOwner, ProjectedEvent, Projection, ProjectionError, RuntimeSource};
use crate::run_metadata::{self, MetadataRef};

pub const TOPIC: &str = "runtime.run_summaries";

/// `runtime/run_summary:<run_id>`.
pub fn doc_key(run_id: &str) -> String {
    format!("runtime/run_summary:{run_id}")
}

/// The recorded receipt, as the summary shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRef {
    pub schema: String,
    pub canonical_json_sha256: String,
    pub trajectory_hash: String,
    pub replay_hash: String,
    pub run_status: String,
    pub last_seq: u64,
    pub recorded_at: String,
}

/// The run summary document. Field order is the payload's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummaryDoc {
    pub run_id: String,
    pub thread_id: String,
    /// `created`, `running`, `canceling`, `succeeded`, `failed`, `canceled`.
    pub status: String,
    /// The run's last `seq` (its event count after creation).
    pub latest_seq: u64,
    pub owner_user_id: Option<String>,
    pub owner_guest_scope: Option<String>,
    pub org_id: Option<String>,
    /// The run's metadata when its canonical JSON is at most
    /// [`INLINE_METADATA_BYTES`](crate::run_metadata::INLINE_METADATA_BYTES); otherwise empty,
    /// and `metadata_ref` names the `runtime.run_metadata` document that holds it (a summary is
    /// re-sent on every change; metadata never changes, so it is sent once).
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_ref: Option<MetadataRef>,
    pub frame_count: u64,
    pub tool_calls: u64,
    pub last_event_type: String,
    pub cancel_requested: bool,
    pub cancel_reason: Option<String>,
    pub reason_class: Option<String>,
    pub reason: Option<String>,
    pub error_code: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    pub receipt: Option<ReceiptRef>,
    pub runtime_source: RuntimeSource,
    pub projection_version: u32,
    pub projected_at: String,
}

/// The run summaries read model.
pub struct RunSummaries;

impl Projection for RunSummaries {
    type Doc = RunSummaryDoc;
    const NAME: &'static str = "run_summaries";
    const TOPIC: &'static str = TOPIC;
    const TABLE: &'static str = "sync_run_summaries";
    const VERSION: u32 = 1;
    const AGGREGATE_TYPES: &'static [&'static str] = &["run", "run_receipt"];

    fn upcast(event: &SerializedEvent) -> Option<SerializedEvent> {
        (event.aggregate_type == "run" && event.event_version == LEGACY_RUN_EVENT_VERSION)
            .then(|| <Run as RuntimeAggregate>::upcast(event.clone()))
    }

    fn doc_key(event: &SerializedEvent) -> Option<String> {
        Some(doc_key(&event.aggregate_id))
    }

    fn apply(
        slot: &mut Option<RunSummaryDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let prior = slot.take();
        let at = |t: Timestamp| t.to_rfc3339();
        let missing = || ProjectionError::Inconsistent {
            at: format!(
                "{}/{}#{}",
                event.event.aggregate_type, event.event.aggregate_id, event.event.sequence
            ),
            message: "event before the run's birth record".into(),
        };
        if event.event.aggregate_type == "run_receipt" {
            let ReceiptEvent::ReceiptRecorded {
                receipt,
                canonical_json_sha256,
                trajectory_hash,
                replay_hash,
                run_status,
                last_seq,
                recorded_at,
                ..
            } = event.decode()?;
            let Some(prior) = prior else {
                return Err(missing());
            };
            let mut doc = prior;
            doc.receipt = Some(ReceiptRef {
                schema: receipt
                    .get("schema")
                    .and_then(Value::as_str)
                    .unwrap_or("openagents.receipt.v1")
                    .to_owned(),
                canonical_json_sha256,
                trajectory_hash,
                replay_hash,
                run_status,
                last_seq,
                recorded_at: at(recorded_at),
            });
            doc.runtime_source = event.source();
            doc.projection_version = Self::VERSION;
            doc.projected_at = at(event.recorded_at);
            *slot = Some(doc);
            return Ok(true);
        }
        let run_event: RunEvent = event.decode()?;
        let mut doc = match (&run_event, prior) {
            (
                RunEvent::RunCreated {
                    run_id,
                    thread_id,
                    owner,
                    org_id,
                    metadata,
                    created_at,
                },
                _,
            ) => {
                let owner = DocOwner::of(Some(owner), org_id.as_ref().map(|o| o.as_str()));
                let metadata_ref = run_metadata::omitted(run_id.as_str(), metadata);
                RunSummaryDoc {
                    run_id: run_id.to_string(),
                    thread_id: thread_id.to_string(),
                    status: RunStatus::Created.as_str().to_owned(),
                    latest_seq: 0,
                    owner_user_id: owner.user_id,
                    owner_guest_scope: owner.guest_scope,
                    org_id: owner.org_id,
                    metadata: if metadata_ref.is_some() {
                        Map::new()
                    } else {
                        metadata.clone()
                    },
                    metadata_ref,
                    frame_count: 0,
                    tool_calls: 0,
                    last_event_type: "run.created".to_owned(),
                    cancel_requested: false,
                    cancel_reason: None,
                    reason_class: None,
                    reason: None,
                    error_code: None,
                    created_at: at(*created_at),
                    started_at: None,
                    finished_at: None,
                    updated_at: at(*created_at),
                    receipt: None,
                    runtime_source: event.source(),
                    projection_version: Self::VERSION,
                    projected_at: at(event.recorded_at),
                }
            }
            (_, None) => return Err(missing()),
            (_, Some(prior)) => prior,
        };
        if !matches!(run_event, RunEvent::RunCreated { .. }) {
            // Run seq = journal sequence - 1 (run.created is the birth record, not a run event).
            doc.latest_seq = (event.event.sequence as u64).saturating_sub(1);
            doc.updated_at = at(run_event.at());
            doc.runtime_source = event.source();
            doc.projection_version = Self::VERSION;
            doc.projected_at = at(event.recorded_at);
        }
        match run_event {
            RunEvent::RunCreated { .. } => {}
            RunEvent::RunStarted { started_at, .. } => {
                doc.status = RunStatus::Running.as_str().to_owned();
                doc.started_at = Some(at(started_at));
                doc.last_event_type = "run.started".to_owned();
            }
            RunEvent::FrameAppended { frame_type, .. } => {
                doc.frame_count += 1;
                if frame_type == "tool_call" || frame_type == "tool" {
                    doc.tool_calls += 1;
                }
                doc.last_event_type = frame_type;
            }
            RunEvent::CancelRequested { reason, .. } => {
                doc.status = RunStatus::Canceling.as_str().to_owned();
                doc.cancel_requested = true;
                doc.cancel_reason = Some(reason);
                doc.last_event_type = "run.cancel_requested".to_owned();
            }
            ref finished @ RunEvent::RunFinished {
                status,
                ref reason,
                ref error_code,
                finished_at,
                ..
            } => {
                doc.status = status.as_str().to_owned();
                doc.reason_class = finished.reason_class();
                doc.reason = reason.clone();
                doc.error_code = error_code.clone();
                doc.finished_at = Some(at(finished_at));
                doc.last_event_type = "run.finished".to_owned();
            }
        }
        *slot = Some(doc);
        Ok(true)
    }

    fn owner(doc: &RunSummaryDoc) -> DocOwner {
        DocOwner {
            user_id: doc.owner_user_id.clone(),
            guest_scope: doc.owner_guest_scope.clone(),
            org_id: doc.org_id.clone(),
        }
    }

    fn projected_at(doc: &RunSummaryDoc) -> Timestamp {
        doc.projected_at.parse().unwrap_or(Timestamp::EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{stored, ts};
    use serde_json::json;

    fn created() -> Value {
        json!({"RunCreated": {"run_id": "run_1", "thread_id": "thr_1",
            "owner": {"kind": "user", "id": "7"}, "org_id": "org_a", "metadata": {"k": "v"},
            "created_at": ts(0)}})
    }

    #[test]
    fn folds_a_run_from_creation_to_its_receipt() {
        let events = vec![
            stored("run", "run_1", 1, "run.created", created(), 0),
            stored(
                "run",
                "run_1",
                2,
                "run.started",
                json!({"RunStarted": {"source": "runtime", "started_at": ts(1)}}),
                1,
            ),
            stored(
                "run",
                "run_1",
                3,
                "run.frame_appended",
                json!({"FrameAppended": {"frame_id": "f1", "frame_type": "tool_call",
                    "payload": {"name": "ls"}, "payload_hash": "sha256:x", "occurred_at": null,
                    "appended_at": ts(2)}}),
                2,
            ),
            stored(
                "run",
                "run_1",
                4,
                "run.finished",
                json!({"RunFinished": {"status": "succeeded", "reason_class": null,
                    "reason": null, "error_code": null, "finished_at": ts(3)}}),
                3,
            ),
            stored(
                "run_receipt",
                "run_1",
                1,
                "run_receipt.recorded",
                json!({"ReceiptRecorded": {"run_id": "run_1",
                    "receipt": {"schema": "openagents.receipt.v1"},
                    "canonical_json_sha256": "abc", "trajectory_hash": "sha256:t",
                    "replay_hash": "sha256:r", "run_status": "succeeded", "last_seq": 3,
                    "recorded_at": ts(4)}}),
                4,
            ),
        ];
        let docs = crate::model::fold::<RunSummaries>(&events).unwrap();
        let (doc, version) = &docs["runtime/run_summary:run_1"];
        assert_eq!(*version, 5);
        assert_eq!(doc.status, "succeeded");
        assert_eq!(doc.latest_seq, 3);
        assert_eq!(doc.tool_calls, 1);
        assert_eq!(doc.frame_count, 1);
        assert_eq!(doc.reason_class.as_deref(), Some("completed"));
        assert_eq!(doc.owner_user_id.as_deref(), Some("7"));
        assert_eq!(doc.org_id.as_deref(), Some("org_a"));
        assert_eq!(doc.receipt.as_ref().unwrap().canonical_json_sha256, "abc");
        assert_eq!(doc.runtime_source.aggregate_type, "run_receipt");
        assert_eq!(doc.projected_at, ts(4));
        assert_eq!(doc.updated_at, ts(3));
    }

    #[test]
    fn an_event_before_the_birth_record_is_an_error_not_a_skip() {
        let events = vec![stored(
            "run",
            "run_1",
            2,
            "run.started",
            json!({"RunStarted": {"source": "runtime", "started_at": ts(1)}}),
            1,
        )];
        assert!(matches!(
            crate::model::fold::<RunSummaries>(&events),
            Err(ProjectionError::Inconsistent { .. })
        ));
    }

    #[test]
    fn an_undecodable_event_is_an_error() {
        let events = vec![stored(
            "run",
            "run_1",
            1,
            "run.created",
            json!({"Nope": {}}),
            0,
        )];
        assert!(matches!(
            crate::model::fold::<RunSummaries>(&events),
            Err(ProjectionError::Decode { .. })
        ));
    }
}

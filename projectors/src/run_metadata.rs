//! Run metadata: topic `runtime.run_metadata`, one document per run whose `metadata` is too
//! large to ride in its summary, `runtime/run_metadata:<run_id>`, written once (version 1, from
//! the run's birth record; metadata never changes) and owned like the run.
//!
//! A run summary changes on every frame and is re-sent whole each time; metadata (up to the
//! runtime's `--metadata-limit-bytes`, 16 KiB by default) does not change after creation. So a
//! summary carries `metadata` inline only up to [`INLINE_METADATA_BYTES`] of canonical JSON;
//! larger metadata lives here, sent once, and the summary names it (`metadata_ref`: this
//! document's key, topic, size and hash). Runs with small metadata get no document here.

use aggregates::run::{Run, RunEvent, LEGACY_RUN_EVENT_VERSION};
use aggregates::{RuntimeAggregate, Timestamp};
use cqrs_es::persist::SerializedEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{DocOwner, ProjectedEvent, Projection, ProjectionError, RuntimeSource};

pub const TOPIC: &str = "runtime.run_metadata";

/// The largest metadata, as canonical JSON bytes, a run summary carries inline. A constant,
/// not a flag: projections are pure, and every replay of a journal must produce the same
/// documents.
pub const INLINE_METADATA_BYTES: usize = 1024;

/// `runtime/run_metadata:<run_id>`.
pub fn doc_key(run_id: &str) -> String {
    format!("runtime/run_metadata:{run_id}")
}

/// Where a summary's omitted metadata is: this topic's document, its size and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRef {
    pub topic: String,
    pub doc_key: String,
    /// The canonical JSON's length in bytes.
    pub bytes: u64,
    /// `sha256:<hex>` of the canonical JSON (as payload hashes are computed).
    pub sha256: String,
}

/// `Some` when `metadata` is too large for a summary: the reference the summary carries
/// instead.
pub fn omitted(run_id: &str, metadata: &Map<String, Value>) -> Option<MetadataRef> {
    let value = Value::Object(metadata.clone());
    let canonical = aggregates::canonical::canonical_json(&value);
    (canonical.len() > INLINE_METADATA_BYTES).then(|| MetadataRef {
        topic: TOPIC.to_owned(),
        doc_key: doc_key(run_id),
        bytes: canonical.len() as u64,
        sha256: aggregates::canonical::hash_canonical(&value),
    })
}

/// One run's metadata. Field order is the payload's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMetadataDoc {
    pub run_id: String,
    pub thread_id: String,
    pub metadata: Map<String, Value>,
    pub owner_user_id: Option<String>,
    pub owner_guest_scope: Option<String>,
    pub org_id: Option<String>,
    pub created_at: String,
    pub runtime_source: RuntimeSource,
    pub projection_version: u32,
    pub projected_at: String,
}

/// The run metadata read model.
pub struct RunMetadata;

impl Projection for RunMetadata {
    type Doc = RunMetadataDoc;
    const NAME: &'static str = "run_metadata";
    const TOPIC: &'static str = TOPIC;
    const TABLE: &'static str = "sync_run_metadata";
    const VERSION: u32 = 1;
    const AGGREGATE_TYPES: &'static [&'static str] = &["run"];

    fn upcast(event: &SerializedEvent) -> Option<SerializedEvent> {
        (event.event_version == LEGACY_RUN_EVENT_VERSION)
            .then(|| <Run as RuntimeAggregate>::upcast(event.clone()))
    }

    fn doc_key(event: &SerializedEvent) -> Option<String> {
        // Only the birth record carries metadata.
        (event.sequence == 1).then(|| doc_key(&event.aggregate_id))
    }

    fn apply(
        slot: &mut Option<RunMetadataDoc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError> {
        let RunEvent::RunCreated {
            run_id,
            thread_id,
            owner,
            org_id,
            metadata,
            created_at,
        } = event.decode()?
        else {
            return Err(ProjectionError::Inconsistent {
                at: format!("run/{}#{}", event.event.aggregate_id, event.event.sequence),
                message: "the run's first event is not its creation".into(),
            });
        };
        if omitted(run_id.as_str(), &metadata).is_none() {
            return Ok(false);
        }
        let owner = DocOwner::of(Some(&owner), org_id.as_ref().map(|o| o.as_str()));
        *slot = Some(RunMetadataDoc {
            run_id: run_id.to_string(),
            thread_id: thread_id.to_string(),
            metadata,
            owner_user_id: owner.user_id,
            owner_guest_scope: owner.guest_scope,
            org_id: owner.org_id,
            created_at: created_at.to_rfc3339(),
            runtime_source: event.source(),
            projection_version: Self::VERSION,
            projected_at: event.recorded_at.to_rfc3339(),
        });
        Ok(true)
    }

    fn owner(doc: &RunMetadataDoc) -> DocOwner {
        DocOwner {
            user_id: doc.owner_user_id.clone(),
            guest_scope: doc.owner_guest_scope.clone(),
            org_id: doc.org_id.clone(),
        }
    }

    fn projected_at(doc: &RunMetadataDoc) -> Timestamp {
        doc.projected_at.parse().unwrap_or(Timestamp::EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{stored, ts};
    use serde_json::json;

    fn created(run: &str, metadata: Value) -> engine::journal::StoredEvent {
        stored(
            "run",
            run,
            1,
            "run.created",
            json!({"RunCreated": {"run_id": run, "thread_id": "t1",
                "owner": {"kind": "user", "id": "5"}, "org_id": "org_x",
                "metadata": metadata, "created_at": ts(0)}}),
            0,
        )
    }

    #[test]
    fn only_metadata_too_large_for_a_summary_gets_a_document() {
        let big = json!({"blob": "x".repeat(INLINE_METADATA_BYTES)});
        let events = vec![
            created("small", json!({"k": "v"})),
            created("big", big.clone()),
        ];
        let docs = crate::model::fold::<RunMetadata>(&events).unwrap();
        assert_eq!(
            docs.keys().collect::<Vec<_>>(),
            ["runtime/run_metadata:big"]
        );
        let (doc, version) = &docs["runtime/run_metadata:big"];
        assert_eq!(*version, 1);
        assert_eq!(Value::Object(doc.metadata.clone()), big);
        assert_eq!(doc.owner_user_id.as_deref(), Some("5"));
        assert_eq!(doc.org_id.as_deref(), Some("org_x"));
        let reference = omitted("big", &doc.metadata).unwrap();
        assert_eq!(reference.doc_key, "runtime/run_metadata:big");
        assert!(reference.bytes > INLINE_METADATA_BYTES as u64);
        assert!(omitted("small", json!({"k": "v"}).as_object().unwrap()).is_none());
    }
}

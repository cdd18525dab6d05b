//! Events of a worker. `event_type()` strings are a storage format and never change.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{OrgId, Owner, RequestId, WorkerId};
use crate::worker::WorkerStatus;
use crate::Timestamp;

/// Current version of every worker event shape.
pub const WORKER_EVENT_VERSION: &str = "1.0";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkerEvent {
    WorkerRegistered {
        worker_id: WorkerId,
        owner: Owner,
        /// Absent in events stored before tenants existed; omitted from the JSON when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        org_id: Option<OrgId>,
        adapter: String,
        workspace_ref: Option<String>,
        codex_home_ref: Option<String>,
        metadata: Map<String, Value>,
        lease_expires_at: Timestamp,
        registered_at: Timestamp,
    },
    /// A stopped, failed or lost worker was registered again and is starting.
    WorkerReattached {
        previous_status: WorkerStatus,
        lease_expires_at: Timestamp,
        reattached_at: Timestamp,
    },
    /// starting → running (`reason`: `heartbeat` or `reported`).
    WorkerStarted {
        reason: String,
        lease_expires_at: Timestamp,
        started_at: Timestamp,
    },
    LeaseRenewed {
        lease_expires_at: Timestamp,
        renewed_at: Timestamp,
    },
    RequestReceived {
        request_id: RequestId,
        method: String,
        params: Value,
        request_hash: String,
        received_at: Timestamp,
    },
    /// A `worker.*` event the worker reported that does not change its status.
    EventReported {
        event_type: String,
        payload: Map<String, Value>,
        reported_at: Timestamp,
    },
    WorkerStopping {
        reason: String,
        stopping_at: Timestamp,
    },
    WorkerStopped {
        reason: String,
        stopped_at: Timestamp,
    },
    WorkerFailed {
        reason: String,
        failed_at: Timestamp,
    },
    WorkerLost {
        lease_expired_at: Timestamp,
        detected_at: Timestamp,
    },
}

impl WorkerEvent {
    pub fn at(&self) -> Timestamp {
        match self {
            WorkerEvent::WorkerRegistered { registered_at, .. } => *registered_at,
            WorkerEvent::WorkerReattached { reattached_at, .. } => *reattached_at,
            WorkerEvent::WorkerStarted { started_at, .. } => *started_at,
            WorkerEvent::LeaseRenewed { renewed_at, .. } => *renewed_at,
            WorkerEvent::RequestReceived { received_at, .. } => *received_at,
            WorkerEvent::EventReported { reported_at, .. } => *reported_at,
            WorkerEvent::WorkerStopping { stopping_at, .. } => *stopping_at,
            WorkerEvent::WorkerStopped { stopped_at, .. } => *stopped_at,
            WorkerEvent::WorkerFailed { failed_at, .. } => *failed_at,
            WorkerEvent::WorkerLost { detected_at, .. } => *detected_at,
        }
    }

    /// The status this event moves the worker to, if it moves it.
    pub fn new_status(&self) -> Option<WorkerStatus> {
        match self {
            WorkerEvent::WorkerRegistered { .. } | WorkerEvent::WorkerReattached { .. } => {
                Some(WorkerStatus::Starting)
            }
            WorkerEvent::WorkerStarted { .. } => Some(WorkerStatus::Running),
            WorkerEvent::WorkerStopping { .. } => Some(WorkerStatus::Stopping),
            WorkerEvent::WorkerStopped { .. } => Some(WorkerStatus::Stopped),
            WorkerEvent::WorkerFailed { .. } => Some(WorkerStatus::Failed),
            WorkerEvent::WorkerLost { .. } => Some(WorkerStatus::Lost),
            WorkerEvent::LeaseRenewed { .. }
            | WorkerEvent::RequestReceived { .. }
            | WorkerEvent::EventReported { .. } => None,
        }
    }

    /// The event type clients see on the worker stream: the stored type, except that a reported
    /// event keeps the `worker.*` type the worker gave it.
    pub fn stream_event_type(&self) -> String {
        match self {
            WorkerEvent::EventReported { event_type, .. } => event_type.clone(),
            other => other.event_type(),
        }
    }

    /// The payload clients see on the worker stream (SSE and `runtime.codex_worker_events`): a
    /// reported event's own payload, otherwise the event's fields.
    pub fn stream_payload(&self) -> Value {
        if let WorkerEvent::EventReported { payload, .. } = self {
            return Value::Object(payload.clone());
        }
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map.into_iter().next().map(|(_, v)| v).unwrap_or_default(),
            _ => Value::Object(Map::new()),
        }
    }
}

impl DomainEvent for WorkerEvent {
    fn event_type(&self) -> String {
        match self {
            WorkerEvent::WorkerRegistered { .. } => "worker.registered",
            WorkerEvent::WorkerReattached { .. } => "worker.reattached",
            WorkerEvent::WorkerStarted { .. } => "worker.started",
            WorkerEvent::LeaseRenewed { .. } => "worker.heartbeat",
            WorkerEvent::RequestReceived { .. } => "worker.request.received",
            WorkerEvent::EventReported { .. } => "worker.event",
            WorkerEvent::WorkerStopping { .. } => "worker.stopping",
            WorkerEvent::WorkerStopped { .. } => "worker.stopped",
            WorkerEvent::WorkerFailed { .. } => "worker.failed",
            WorkerEvent::WorkerLost { .. } => "worker.lost",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        WORKER_EVENT_VERSION.to_owned()
    }
}

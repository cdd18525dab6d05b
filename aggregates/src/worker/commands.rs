//! Commands a worker accepts.

use serde_json::{Map, Value};

use crate::ids::{OrgId, Owner, RequestId, WorkerId};

#[derive(Clone, Debug, PartialEq)]
pub enum WorkerCommand {
    /// Create the worker, or reattach to it: a no-op while it is active, a restart once it has
    /// stopped, failed or been lost.
    RegisterWorker {
        worker_id: WorkerId,
        owner: Owner,
        /// The tenant, when the caller's token names one. Recorded at first registration only.
        org_id: Option<OrgId>,
        adapter: String,
        workspace_ref: Option<String>,
        codex_home_ref: Option<String>,
        metadata: Map<String, Value>,
        lease_ttl_ms: u64,
    },
    /// The worker is alive: starting → running, and the lease is extended. Renewals are only
    /// journaled once less than half the lease remains, so steady heartbeats cost little.
    /// Without `lease_ttl_ms` the lease is the one the worker registered (or reattached) with.
    Heartbeat { lease_ttl_ms: Option<u64> },
    /// A JSON-RPC-style request for the worker, idempotent by `request_id`.
    RecordRequest {
        request_id: RequestId,
        method: String,
        params: Value,
    },
    /// An event the worker reports (`worker.*`). Lifecycle types move the status; any other
    /// `worker.*` type is recorded as a stream frame.
    ReportEvent {
        event_type: String,
        payload: Map<String, Value>,
    },
    /// The owner asks the worker to stop.
    RequestStop { reason: String },
    /// Time-driven: mark the worker lost if its lease has run out.
    ExpireLease,
}

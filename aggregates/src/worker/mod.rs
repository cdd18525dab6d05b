//! The Worker aggregate: a long-lived agent process (a Codex session on a desktop or in the
//! cloud) that the runtime tracks through a lease.
//!
//! ```text
//! (new) ─register─▶ starting ─heartbeat/started─▶ running ─worker.stopping─▶ stopping
//!                      │                            │                           │
//!                      ├──────────── stop (owner) / worker.stopped ─────────────┼──▶ stopped
//!                      ├──────────── worker.failed ─────────────────────────────┼──▶ failed
//!                      └──────────── lease expired (ExpireLease) ───────────────┴──▶ lost
//! stopped | failed | lost ─register (reattach)─▶ starting
//! ```
//! Every event gets the next worker `seq` (the journal sequence: 1, 2, 3 …).

mod commands;
mod error;
mod events;

use std::collections::BTreeMap;
use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use commands::WorkerCommand;
pub use error::WorkerError;
pub use events::{WorkerEvent, WORKER_EVENT_VERSION};

use crate::canonical::hash_canonical;
use crate::ids::{OrgId, Owner, RequestId, WorkerId};
use crate::{RuntimeAggregate, Stamped, Timestamp};

/// Shortest and longest lease a worker may ask for.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
pub const MAX_LEASE_TTL_MS: u64 = 3_600_000;
/// Longest request method name.
pub const MAX_METHOD_LEN: usize = 128;

/// Where a worker is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Lost,
}

impl WorkerStatus {
    pub const ALL: [WorkerStatus; 6] = [
        WorkerStatus::Starting,
        WorkerStatus::Running,
        WorkerStatus::Stopping,
        WorkerStatus::Stopped,
        WorkerStatus::Failed,
        WorkerStatus::Lost,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerStatus::Starting => "starting",
            WorkerStatus::Running => "running",
            WorkerStatus::Stopping => "stopping",
            WorkerStatus::Stopped => "stopped",
            WorkerStatus::Failed => "failed",
            WorkerStatus::Lost => "lost",
        }
    }

    /// Holds a lease and may receive work (starting, running, stopping).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            WorkerStatus::Starting | WorkerStatus::Running | WorkerStatus::Stopping
        )
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Identity {
    worker_id: WorkerId,
    owner: Owner,
    #[serde(default)]
    org_id: Option<OrgId>,
    adapter: String,
    workspace_ref: Option<String>,
    codex_home_ref: Option<String>,
    metadata: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    identity: Option<Identity>,
    status: Option<WorkerStatus>,
    latest_seq: u64,
    lease_expires_at: Timestamp,
    /// The lease the worker registered (or last reattached) with: what a heartbeat without
    /// `lease_ttl_ms` renews to. Folded from the registration
    /// event (expiry minus registration time), so no event carries it; absent in states saved
    /// before it existed, which fall back to [`DEFAULT_LEASE_TTL_MS`].
    #[serde(default)]
    lease_ttl_ms: Option<u64>,
    last_heartbeat_at: Option<Timestamp>,
    started_at: Option<Timestamp>,
    stopped_at: Option<Timestamp>,
    updated_at: Timestamp,
    /// request_id -> (request hash, seq of its `worker.request.received`), for idempotent
    /// re-sends.
    requests: BTreeMap<RequestId, (String, u64)>,
}

/// Estimated bytes of one request-index or metadata entry.
const INDEX_ENTRY_BYTES: usize = 2 * 24 + 8 + 48 + 64 + 32;

/// A cheap view of a worker for responses.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSummary {
    pub worker_id: Option<WorkerId>,
    pub owner: Option<Owner>,
    pub org_id: Option<OrgId>,
    pub adapter: Option<String>,
    pub workspace_ref: Option<String>,
    pub codex_home_ref: Option<String>,
    pub metadata: Map<String, Value>,
    pub status: Option<WorkerStatus>,
    pub latest_seq: u64,
    pub lease_expires_at: Timestamp,
    pub last_heartbeat_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

impl WorkerSummary {
    pub fn exists(&self) -> bool {
        self.status.is_some()
    }
}

fn check_lease(lease_ttl_ms: u64) -> Result<(), WorkerError> {
    if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&lease_ttl_ms) {
        Ok(())
    } else {
        Err(WorkerError::InvalidLease(format!(
            "lease_ttl_ms must be between {MIN_LEASE_TTL_MS} and {MAX_LEASE_TTL_MS}"
        )))
    }
}

/// Fingerprint of a request's content.
pub fn request_hash(method: &str, params: &Value) -> String {
    hash_canonical(&json!({ "method": method, "params": params }))
}

fn reason_from(payload: &Map<String, Value>, default: &str) -> String {
    payload
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_owned()
}

impl Worker {
    fn status(&self) -> Result<WorkerStatus, WorkerError> {
        self.status.ok_or(WorkerError::NotFound)
    }

    /// The lease the worker registered with.
    fn registered_lease_ttl_ms(&self) -> u64 {
        self.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS)
    }

    /// A heartbeat: start a starting worker, renew a lease that is more than half used. Without
    /// a `lease_ttl_ms` the lease is the one the worker registered with.
    fn heartbeat(
        &self,
        at: Timestamp,
        status: WorkerStatus,
        lease_ttl_ms: Option<u64>,
    ) -> Result<Option<WorkerEvent>, WorkerError> {
        let lease_ttl_ms = lease_ttl_ms.unwrap_or_else(|| self.registered_lease_ttl_ms());
        check_lease(lease_ttl_ms)?;
        let lease_expires_at = at.plus_millis(lease_ttl_ms);
        match status {
            WorkerStatus::Starting => Ok(Some(WorkerEvent::WorkerStarted {
                reason: "heartbeat".into(),
                lease_expires_at,
                started_at: at,
            })),
            WorkerStatus::Running | WorkerStatus::Stopping => {
                let remaining = self.lease_expires_at.millis_since(at);
                if remaining * 2 < lease_ttl_ms {
                    Ok(Some(WorkerEvent::LeaseRenewed {
                        lease_expires_at,
                        renewed_at: at,
                    }))
                } else {
                    Ok(None)
                }
            }
            inactive => Err(WorkerError::NotActive { status: inactive }),
        }
    }

    fn handle_command(
        &self,
        at: Timestamp,
        command: WorkerCommand,
    ) -> Result<Option<WorkerEvent>, WorkerError> {
        if let WorkerCommand::RegisterWorker {
            worker_id,
            owner,
            org_id,
            adapter,
            workspace_ref,
            codex_home_ref,
            metadata,
            lease_ttl_ms,
        } = command
        {
            check_lease(lease_ttl_ms)?;
            let lease_expires_at = at.plus_millis(lease_ttl_ms);
            return match (&self.identity, self.status) {
                (Some(identity), _) if identity.owner != owner => Err(WorkerError::NotOwner),
                (Some(_), Some(status)) if status.is_active() => Ok(None),
                (Some(_), Some(previous_status)) => Ok(Some(WorkerEvent::WorkerReattached {
                    previous_status,
                    lease_expires_at,
                    reattached_at: at,
                })),
                _ => Ok(Some(WorkerEvent::WorkerRegistered {
                    worker_id,
                    owner,
                    org_id,
                    adapter,
                    workspace_ref,
                    codex_home_ref,
                    metadata,
                    lease_expires_at,
                    registered_at: at,
                })),
            };
        }
        let status = self.status()?;
        match command {
            WorkerCommand::RegisterWorker { .. } => unreachable!("handled above"),
            WorkerCommand::Heartbeat { lease_ttl_ms } => self.heartbeat(at, status, lease_ttl_ms),
            WorkerCommand::RecordRequest {
                request_id,
                method,
                params,
            } => {
                if method.trim().is_empty() || method.len() > MAX_METHOD_LEN {
                    return Err(WorkerError::InvalidRequest(format!(
                        "request.method must be 1 to {MAX_METHOD_LEN} characters"
                    )));
                }
                let hash = request_hash(&method, &params);
                if let Some((stored, _)) = self.requests.get(&request_id) {
                    return if *stored == hash {
                        Ok(None)
                    } else {
                        Err(WorkerError::RequestConflict { request_id })
                    };
                }
                match status {
                    WorkerStatus::Starting | WorkerStatus::Running => {
                        Ok(Some(WorkerEvent::RequestReceived {
                            request_id,
                            method,
                            params,
                            request_hash: hash,
                            received_at: at,
                        }))
                    }
                    WorkerStatus::Stopping => Err(WorkerError::NotRunning { status }),
                    inactive => Err(WorkerError::NotActive { status: inactive }),
                }
            }
            WorkerCommand::ReportEvent {
                event_type,
                payload,
            } => self.report(at, status, event_type, payload),
            WorkerCommand::RequestStop { reason } => {
                if status.is_active() {
                    Ok(Some(WorkerEvent::WorkerStopped {
                        reason,
                        stopped_at: at,
                    }))
                } else {
                    Ok(None)
                }
            }
            WorkerCommand::ExpireLease => {
                if !status.is_active() {
                    return Err(WorkerError::NotActive { status });
                }
                if at < self.lease_expires_at {
                    return Err(WorkerError::LeaseNotExpired);
                }
                Ok(Some(WorkerEvent::WorkerLost {
                    lease_expired_at: self.lease_expires_at,
                    detected_at: at,
                }))
            }
        }
    }

    fn report(
        &self,
        at: Timestamp,
        status: WorkerStatus,
        event_type: String,
        payload: Map<String, Value>,
    ) -> Result<Option<WorkerEvent>, WorkerError> {
        if !event_type.starts_with("worker.") || event_type.len() > 128 {
            return Err(WorkerError::InvalidEvent(
                "event.event_type must start with worker. (at most 128 characters)".into(),
            ));
        }
        if event_type == "worker.stopped" && status == WorkerStatus::Stopped {
            return Ok(None);
        }
        if !status.is_active() {
            return Err(WorkerError::NotActive { status });
        }
        match event_type.as_str() {
            "worker.registered"
            | "worker.reattached"
            | "worker.lost"
            | "worker.request.received" => Err(WorkerError::InvalidEvent(format!(
                "{event_type} is recorded by the runtime and cannot be reported"
            ))),
            "worker.heartbeat" => {
                let ttl = payload.get("lease_ttl_ms").and_then(Value::as_u64);
                self.heartbeat(at, status, ttl)
            }
            "worker.started" | "worker.running" => match status {
                WorkerStatus::Starting => Ok(Some(WorkerEvent::WorkerStarted {
                    reason: "reported".into(),
                    lease_expires_at: self
                        .lease_expires_at
                        .max(at.plus_millis(crate::worker::DEFAULT_LEASE_TTL_MS)),
                    started_at: at,
                })),
                WorkerStatus::Running => Ok(None),
                _ => Err(WorkerError::NotRunning { status }),
            },
            "worker.stopping" => match status {
                WorkerStatus::Stopping => Ok(None),
                _ => Ok(Some(WorkerEvent::WorkerStopping {
                    reason: reason_from(&payload, "reported"),
                    stopping_at: at,
                })),
            },
            "worker.stopped" => Ok(Some(WorkerEvent::WorkerStopped {
                reason: reason_from(&payload, "reported"),
                stopped_at: at,
            })),
            "worker.failed" => Ok(Some(WorkerEvent::WorkerFailed {
                reason: reason_from(&payload, "reported"),
                failed_at: at,
            })),
            _ => Ok(Some(WorkerEvent::EventReported {
                event_type,
                payload,
                reported_at: at,
            })),
        }
    }
}

/// Lease given when a worker does not ask for one.
pub const DEFAULT_LEASE_TTL_MS: u64 = 60_000;

impl Aggregate for Worker {
    const TYPE: &'static str = "codex_worker";
    type Command = Stamped<WorkerCommand>;
    type Event = WorkerEvent;
    type Error = WorkerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let Some(event) = self.handle_command(command.at, command.command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let at = event.at();
        self.updated_at = at;
        self.latest_seq += 1;
        if let Some(status) = event.new_status() {
            self.status = Some(status);
        }
        match event {
            WorkerEvent::WorkerRegistered {
                worker_id,
                owner,
                org_id,
                adapter,
                workspace_ref,
                codex_home_ref,
                metadata,
                lease_expires_at,
                registered_at,
            } => {
                self.lease_ttl_ms = Some(lease_expires_at.millis_since(registered_at));
                self.identity = Some(Identity {
                    worker_id,
                    owner,
                    org_id,
                    adapter,
                    workspace_ref,
                    codex_home_ref,
                    metadata,
                });
                self.lease_expires_at = lease_expires_at;
                self.started_at = Some(at);
            }
            WorkerEvent::WorkerReattached {
                lease_expires_at,
                reattached_at,
                ..
            } => {
                self.lease_ttl_ms = Some(lease_expires_at.millis_since(reattached_at));
                self.lease_expires_at = lease_expires_at;
                self.started_at = Some(at);
                self.stopped_at = None;
            }
            WorkerEvent::WorkerStarted {
                lease_expires_at, ..
            }
            | WorkerEvent::LeaseRenewed {
                lease_expires_at, ..
            } => {
                self.lease_expires_at = lease_expires_at;
                self.last_heartbeat_at = Some(at);
            }
            WorkerEvent::RequestReceived {
                request_id,
                request_hash,
                ..
            } => {
                self.requests
                    .insert(request_id, (request_hash, self.latest_seq));
            }
            WorkerEvent::EventReported { .. } | WorkerEvent::WorkerStopping { .. } => {}
            WorkerEvent::WorkerStopped { .. }
            | WorkerEvent::WorkerFailed { .. }
            | WorkerEvent::WorkerLost { .. } => self.stopped_at = Some(at),
        }
    }
}

impl RuntimeAggregate for Worker {
    type Action = WorkerCommand;
    type Summary = WorkerSummary;

    /// The inline size plus the request index and the metadata entries (estimated per entry:
    /// what grows with a long-lived worker).
    fn approx_bytes(&self) -> usize {
        let metadata = self.identity.as_ref().map_or(0, |i| i.metadata.len());
        std::mem::size_of::<Self>() + (self.requests.len() + metadata) * INDEX_ENTRY_BYTES
    }

    /// A re-sent request: the seq (= journal sequence) of its `worker.request.received`.
    fn recorded_sequence(&self, action: &WorkerCommand) -> Option<u64> {
        match action {
            WorkerCommand::RecordRequest { request_id, .. } => {
                self.requests.get(request_id).map(|(_, seq)| *seq)
            }
            _ => None,
        }
    }

    fn summary(&self) -> WorkerSummary {
        let identity = self.identity.as_ref();
        WorkerSummary {
            worker_id: identity.map(|i| i.worker_id.clone()),
            owner: identity.map(|i| i.owner.clone()),
            org_id: identity.and_then(|i| i.org_id.clone()),
            adapter: identity.map(|i| i.adapter.clone()),
            workspace_ref: identity.and_then(|i| i.workspace_ref.clone()),
            codex_home_ref: identity.and_then(|i| i.codex_home_ref.clone()),
            metadata: identity.map(|i| i.metadata.clone()).unwrap_or_default(),
            status: self.status,
            latest_seq: self.latest_seq,
            lease_expires_at: self.lease_expires_at,
            last_heartbeat_at: self.last_heartbeat_at,
            started_at: self.started_at,
            stopped_at: self.stopped_at,
            updated_at: self.updated_at,
        }
    }
}

#[cfg(test)]
mod tests;

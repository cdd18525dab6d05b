//! Why a worker command was rejected. Each variant has a stable machine-readable `reason()`.

use crate::ids::RequestId;
use crate::worker::WorkerStatus;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("worker not found")]
    NotFound,
    #[error("worker does not belong to principal")]
    NotOwner,
    #[error("worker is {status}; create or reattach to resume")]
    NotActive { status: WorkerStatus },
    #[error("worker is not running")]
    NotRunning { status: WorkerStatus },
    #[error("request_id {request_id} was already used with a different method or params")]
    RequestConflict { request_id: RequestId },
    #[error("lease has not expired")]
    LeaseNotExpired,
    #[error("invalid lease: {0}")]
    InvalidLease(String),
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl WorkerError {
    /// A stable code for the rejection, for API `details.reason` and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::NotFound => "worker_not_found",
            WorkerError::NotOwner => "worker_not_owned",
            WorkerError::NotActive { .. } => "worker_not_active",
            WorkerError::NotRunning { .. } => "worker_not_running",
            WorkerError::RequestConflict { .. } => "request_conflict",
            WorkerError::LeaseNotExpired => "lease_not_expired",
            WorkerError::InvalidLease(_) => "invalid_lease",
            WorkerError::InvalidEvent(_) => "invalid_event",
            WorkerError::InvalidRequest(_) => "invalid_request",
        }
    }
}

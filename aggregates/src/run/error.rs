//! Why a run command was rejected. Each variant has a stable machine-readable `reason()`.

use crate::ids::FrameId;
use crate::run::RunStatus;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("run not found")]
    NotFound,
    #[error("run already exists for another thread or owner")]
    AlreadyExists,
    #[error("run is already {status}")]
    Terminal { status: RunStatus },
    #[error("run has not been started")]
    NotStarted,
    #[error("cancellation was requested; the run can only end as canceled or failed")]
    CancelRequested,
    #[error("a run can only end as canceled after cancellation was requested")]
    CancelNotRequested,
    #[error("frame_id {frame_id} was already used with a different type or payload")]
    FrameConflict { frame_id: FrameId },
    #[error("expected seq {expected} but the next seq is {next}")]
    SeqMismatch { expected: u64, next: u64 },
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
}

impl RunError {
    /// A stable code for the rejection, for API `details.reason` and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RunError::NotFound => "run_not_found",
            RunError::AlreadyExists => "run_exists",
            RunError::Terminal { .. } => "run_terminal",
            RunError::NotStarted => "run_not_started",
            RunError::CancelRequested => "cancel_requested",
            RunError::CancelNotRequested => "cancel_not_requested",
            RunError::FrameConflict { .. } => "frame_conflict",
            RunError::SeqMismatch { .. } => "seq_mismatch",
            RunError::InvalidFrame(_) => "invalid_frame",
        }
    }
}

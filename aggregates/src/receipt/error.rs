//! Why a receipt command was rejected. Each variant has a stable machine-readable `reason()`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("a different receipt ({recorded}) is already recorded for this run")]
    Conflict { recorded: String, offered: String },
    #[error("invalid receipt: {0}")]
    Invalid(String),
}

impl ReceiptError {
    /// A stable code for the rejection, for API `details.reason` and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReceiptError::Conflict { .. } => "receipt_conflict",
            ReceiptError::Invalid(_) => "invalid_receipt",
        }
    }
}

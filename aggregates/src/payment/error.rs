//! Why a payment command was rejected. Each variant has a stable machine-readable `reason()`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("payment not found")]
    NotFound,
    #[error("request_id {request_id} was already used with different payment parameters")]
    RequestConflict { request_id: String },
    #[error("the invoice has expired")]
    InvoiceExpired,
    #[error("the invoice does not match this payment")]
    InvoiceMismatch,
    #[error("attempt {got} is not the payment's current attempt {current}")]
    AttemptMismatch { current: u32, got: u32 },
    #[error("attempt {attempt} is not open (it is {status})")]
    AttemptClosed { attempt: u32, status: &'static str },
    #[error("the preimage does not hash to the payment hash")]
    PreimageMismatch,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl PaymentError {
    pub fn reason(&self) -> &'static str {
        match self {
            PaymentError::NotFound => "payment_not_found",
            PaymentError::RequestConflict { .. } => "idempotency_conflict",
            PaymentError::InvoiceExpired => "invoice_expired",
            PaymentError::InvoiceMismatch => "invoice_mismatch",
            PaymentError::AttemptMismatch { .. } => "attempt_mismatch",
            PaymentError::AttemptClosed { .. } => "attempt_closed",
            PaymentError::PreimageMismatch => "preimage_mismatch",
            PaymentError::InvalidRequest(_) => "invalid_request",
        }
    }
}

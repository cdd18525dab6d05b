//! What `audit verify` reports: each problem found (with stable kind names for
//! `audit verify --json`) and the counts of what was checked.

use std::fmt;

use engine::audit_log::Checkpoint;
use serde::Serialize;

/// What kind of problem a finding is; stable names for scripts (`audit verify --json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A line that is not a JSON object of a known type.
    InvalidLine,
    MissingHeader,
    /// An event's fields do not hash to its `content_hash`: the event was altered.
    ContentMismatch,
    /// An event's `chain_hash` does not follow from its `prev_chain_hash` and content, or its
    /// `prev_chain_hash` is not the previous event's `chain_hash`.
    ChainBroken,
    /// Sequences of an aggregate are absent.
    MissingEvents,
    /// The same event appears twice.
    DuplicateEvent,
    /// An aggregate's events are not in sequence order.
    ReorderedEvent,
    /// Events are not in commit order (their `(transaction_id, position)` goes backwards).
    OutOfCommitOrder,
    /// A receipt does not match the events, or its own hash, or the recorded receipt.
    ReceiptMismatch,
    /// A replay artifact does not match the events or its own hash.
    ReplayMismatch,
    /// A receipt or manifest signature does not verify.
    BadSignature,
    /// A chain head line disagrees with the events (events missing at the end of an aggregate).
    HeadMismatch,
    /// The manifest's counts disagree with the bundle.
    CountMismatch,
    /// The bytes before the manifest do not hash to its `bundle_sha256`.
    BundleHashMismatch,
    /// The bundle ends without a manifest (truncated).
    MissingManifest,
    /// Nothing ties the bundle to a journal the verifier trusts: no checkpoint, an unsigned or
    /// forged one, or one signed by a key that is not trusted.
    Untrusted,
    /// An event is not proven in the checkpoint's tree (no proof, a proof that fails, or the
    /// events of a whole-journal bundle do not rebuild the checkpoint's root).
    NotInTree,
    /// The journal the bundle came from does not extend the checkpoint given with
    /// `--checkpoint`: events before it were changed, removed or reordered.
    NotAppendOnly,
}

/// One problem, with the line it is on (1-based) when it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub line: Option<usize>,
    pub kind: FindingKind,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The outcome of a verification.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    pub aggregates: u64,
    pub receipts_checked: u64,
    pub replays_checked: u64,
    pub signed_by: Option<String>,
    /// The checkpoint the bundle was proven against (when it was).
    pub checkpoint: Option<Checkpoint>,
    /// Events proven in the checkpoint's tree.
    pub events_proven: u64,
    /// Events whose secret fields were replaced by commitments.
    pub events_redacted: u64,
    /// `--integrity-only`: the bundle was only checked against itself.
    pub integrity_only: bool,
    /// `--checkpoint`: the older checkpoint the journal was proven to extend.
    pub extends: Option<Checkpoint>,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn is_valid(&self) -> bool {
        self.findings.is_empty()
    }

    pub fn has(&self, kind: FindingKind) -> bool {
        self.findings.iter().any(|f| f.kind == kind)
    }
}

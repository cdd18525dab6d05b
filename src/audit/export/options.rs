//! What an export is asked to do ([`ExportOptions`], [`Cut`]) and what it did
//! ([`ExportSummary`]).

use aggregates::Timestamp;
use engine::artifacts::ReceiptSigner;
use engine::audit_log::{AuditKey, Checkpoint};

use crate::audit::bundle::Scope;

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub scope: Scope,
    /// Signs the receipts and the manifest.
    pub signer: Option<ReceiptSigner>,
    /// `CARGO_PKG_VERSION` of the exporting binary.
    pub runtime_version: String,
    pub exported_at: Timestamp,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Recompute every event's content hash and chain link while exporting and count stored
    /// hashes that do not match (the bundle always carries the stored values, so `audit verify`
    /// names them too).
    pub verify_stored: bool,
    /// Which checkpoint the bundle is cut at and proven against.
    pub cut: Cut,
    /// Also carry the consistency proof from this tree size to the bundle's checkpoint (what
    /// `audit verify --checkpoint OLD.json` needs for a bundle that is not the whole journal).
    pub consistency_from: Option<u64>,
}

/// Which checkpoint an export is cut at.
#[derive(Clone, Debug)]
pub enum Cut {
    /// Catch the tree up with the journal and sign a checkpoint of it now (needs the audit key):
    /// the bundle holds every event committed when it began.
    Fresh(AuditKey),
    /// The latest stored checkpoint: events after it are left out.
    Latest,
    /// No checkpoint and no proofs: the bundle only agrees with itself.
    IntegrityOnly,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSummary {
    pub events: u64,
    pub aggregates: u64,
    pub runs: u64,
    /// Stored hashes that do not match their recomputation (with `verify_stored`).
    pub stored_hash_mismatches: u64,
    pub bundle_sha256: String,
    pub bytes: u64,
    /// Runs whose events could not be decoded: exported without receipt and replay.
    pub runs_without_artifacts: u64,
    /// Events whose secret fields were replaced by commitments.
    pub redacted_events: u64,
    /// The checkpoint the bundle was cut at.
    pub checkpoint: Option<Checkpoint>,
}

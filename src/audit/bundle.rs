//! The audit bundle format (`openagents.audit_bundle.v2`; `audit verify` also reads v1): one JSON
//! Lines file, streamable in both directions. Line types, in order:
//!
//! 1. `header`: schema, runtime version, chain scheme, scope, export time.
//! 2. `event` (one per event, commit order): `position`, `transaction_id`, the stored fields
//!    (`aggregate_type`, `aggregate_id`, `sequence`, `event_type`, `event_version`, `payload`,
//!    `metadata` without the chain keys), `recorded_at`, and the chain link `content_hash`,
//!    `prev_chain_hash`, `chain_hash` (`aggregates::chain`).
//! 3. `receipt` and `replay` (per run whose whole stream is in the bundle): the run's
//!    `openagents.receipt.v1` and the `replay_hash` of its REPLAY.jsonl v1, right after the event
//!    that ends the run (a terminal run takes no further events), or after the events for runs
//!    still open at the end of the range. v1 bundles also carried the REPLAY.jsonl text
//!    (`replay_jsonl`): it repeats every payload of the run, and is the events' own rendering,
//!    which the verifier recomputes anyway (ADR 0126).
//! 4. `chain_head` (per aggregate in the bundle, sorted): the last sequence and chain hash.
//! 5. `manifest` (last line): counts, range, `bundle_sha256` (`sha256:` of every byte before the
//!    manifest line) and, optionally, a Schnorr `signature` over the manifest's canonical hash.
//!
//! Full specification: `docs/receipts-and-replay.md`.

use aggregates::ids::{RunId, WorkerId};
use aggregates::Timestamp;
use serde_json::{json, Value};

/// `schema` of a bundle written now.
pub const BUNDLE_SCHEMA: &str = "openagents.audit_bundle.v2";
/// `schema` of bundles written before ADR 0126 (replay lines carry `replay_jsonl`); still read.
pub const BUNDLE_SCHEMA_V1: &str = "openagents.audit_bundle.v1";

/// What an export covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One run: its events and its recorded receipt.
    Run(RunId),
    /// One worker's events.
    Worker(WorkerId),
    /// Every event recorded in `[since, until)`.
    TimeRange { since: Timestamp, until: Timestamp },
    /// The whole journal.
    All,
}

impl Scope {
    /// The scope as it appears in the header and manifest.
    pub fn to_json(&self) -> Value {
        match self {
            Scope::Run(id) => json!({"kind": "run", "run_id": id}),
            Scope::Worker(id) => json!({"kind": "worker", "worker_id": id}),
            Scope::TimeRange { since, until } => {
                json!({"kind": "time_range", "since": since.to_rfc3339(), "until": until.to_rfc3339()})
            }
            Scope::All => json!({"kind": "all"}),
        }
    }

    /// Whether every aggregate in the bundle is there from its first event (all but time ranges).
    pub fn covers_whole_streams(&self) -> bool {
        !matches!(self, Scope::TimeRange { .. })
    }

    /// The aggregates an export reads (`(type, id)`), empty for everything.
    pub fn aggregates(&self) -> Vec<(String, String)> {
        match self {
            Scope::Run(id) => vec![
                ("run".into(), id.to_string()),
                ("run_receipt".into(), id.to_string()),
            ],
            Scope::Worker(id) => vec![("codex_worker".into(), id.to_string())],
            Scope::TimeRange { .. } | Scope::All => Vec::new(),
        }
    }
}

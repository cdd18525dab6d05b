//! `audit verify`: recomputes everything in a bundle and names exactly what is wrong. One pass
//! over the file; memory holds per-aggregate chain heads and, per run in the bundle, incremental
//! receipt and replay builders (not the events).
//!
//! # Layout
//! - `report.rs`: what a verification finds ([`Finding`], [`FindingKind`]) and its
//!   [`VerifyReport`];
//! - this file: the [`VerifyOptions`] and the one pass over the lines ([`verify_bundle`]);
//! - `events.rs`: event lines: content, hash chain, sequence and commit order, chain heads, and
//!   each run folded into its receipt and replay;
//! - `checkpoint.rs`: the header's checkpoint and trusted keys, each event's proof in its tree,
//!   and consistency with an older checkpoint (`--checkpoint`);
//! - `artifacts.rs`: receipt and replay lines against what the events give;
//! - `manifest.rs`: the manifest (bundle hash, counts) and the signatures of receipts and
//!   manifest.

mod artifacts;
mod checkpoint;
mod events;
mod manifest;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use aggregates::canonical::PrefixedSha256;
use engine::artifacts::receipt::ReceiptBuilder;
use engine::artifacts::{ReplayWriter, RunRecordBuilder};
use engine::audit_log::merkle::{Frontier, Hash};
use engine::audit_log::Checkpoint;
use serde_json::{Map, Value};

use super::bundle::{BUNDLE_SCHEMA, BUNDLE_SCHEMA_V1};

pub use report::{Finding, FindingKind, VerifyReport};

struct AggregateState {
    last_sequence: i64,
    chain_hash: String,
    last_line: usize,
    /// Sequences skipped so far: `(from, to, line where the gap was seen)`.
    gaps: Vec<(i64, i64, usize)>,
}

/// A run whose stream starts in the bundle, folded incrementally.
struct RunState {
    builder: RunRecordBuilder,
    receipt: Option<ReceiptBuilder>,
    replay: Option<ReplayWriter<PrefixedSha256>>,
    broken: Option<String>,
    /// The run's receipt line was checked; no event of the run may follow.
    sealed: bool,
}

struct Verifier {
    report: VerifyReport,
    aggregates: HashMap<(String, String), AggregateState>,
    runs: BTreeMap<String, RunState>,
    recorded_receipts: HashMap<String, String>,
    /// `canonical_json_sha256` of each receipt line's recomputation, by run: a receipt recorded in
    /// the journal after it (a `run_receipt` event later in the bundle) is compared with it.
    recomputed_receipts: HashMap<String, String>,
    last_cursor: Option<(i64, i64, usize)>,
    whole_streams: bool,
    expected_signer: Option<String>,
    options: VerifyOptions,
    /// The header's checkpoint, once trusted (or, with --integrity-only, not checked).
    checkpoint: Option<(Checkpoint, Hash)>,
    /// Whole-journal bundles: the tree rebuilt from every leaf.
    frontier: Option<Frontier>,
    /// Whole-journal bundles: the root at the --checkpoint size, when reached.
    old_root_seen: bool,
    /// The header's scope is the whole journal.
    whole_journal: bool,
    /// A v1 bundle: every replay line carries its REPLAY.jsonl text.
    replay_text_required: bool,
}

fn str_of<'a>(line: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    line.get(key).and_then(Value::as_str)
}

impl Verifier {
    fn find(&mut self, line: Option<usize>, kind: FindingKind, message: String) {
        self.report.findings.push(Finding {
            line,
            kind,
            message,
        });
    }
}

/// Options of a verification.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Require the manifest (and signed receipts) to be signed by this x-only public key (hex).
    pub expected_signer: Option<String>,
    /// Audit public keys (x-only hex) whose checkpoints are trusted. Without one, and without
    /// `integrity_only`, no bundle verifies.
    pub trusted_keys: Vec<String>,
    /// Check only that the bundle agrees with itself (the pre-checkpoint check); proves nothing
    /// about where it came from.
    pub integrity_only: bool,
    /// A checkpoint held from earlier: the bundle's journal must extend it.
    pub old_checkpoint: Option<Checkpoint>,
}

impl VerifyOptions {
    /// Trust checkpoints signed by `key`.
    pub fn trusting(key: impl Into<String>) -> Self {
        Self {
            trusted_keys: vec![key.into()],
            ..Self::default()
        }
    }

    /// The self-consistency check only.
    pub fn integrity_only() -> Self {
        Self {
            integrity_only: true,
            ..Self::default()
        }
    }
}

/// Verifies a bundle read from `reader`.
///
/// # Errors
/// Only when reading fails; problems with the content are findings.
pub fn verify_bundle<R: BufRead>(
    mut reader: R,
    options: &VerifyOptions,
) -> std::io::Result<VerifyReport> {
    let mut v = Verifier {
        report: VerifyReport::default(),
        aggregates: HashMap::new(),
        runs: BTreeMap::new(),
        recorded_receipts: HashMap::new(),
        recomputed_receipts: HashMap::new(),
        last_cursor: None,
        whole_streams: true,
        expected_signer: options.expected_signer.clone(),
        options: options.clone(),
        checkpoint: None,
        frontier: None,
        old_root_seen: false,
        whole_journal: false,
        replay_text_required: false,
    };
    v.report.integrity_only = options.integrity_only;
    let mut manifest_value: Option<Value> = None;
    let mut hasher = PrefixedSha256::new();
    let mut buffer = Vec::new();
    let mut n = 0usize;
    let mut events_done = false;
    let mut manifest_seen = false;
    loop {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer)? == 0 {
            break;
        }
        n += 1;
        if manifest_seen {
            v.find(
                Some(n),
                FindingKind::InvalidLine,
                "data after the manifest".into(),
            );
            continue;
        }
        let parsed: Result<Value, _> = serde_json::from_slice(&buffer);
        let line = match parsed {
            Ok(Value::Object(line)) => line,
            Ok(_) => {
                v.find(
                    Some(n),
                    FindingKind::InvalidLine,
                    "not a JSON object".into(),
                );
                hasher.update(&buffer);
                continue;
            }
            Err(e) => {
                v.find(
                    Some(n),
                    FindingKind::InvalidLine,
                    format!("not valid JSON ({e}): the line was damaged"),
                );
                hasher.update(&buffer);
                continue;
            }
        };
        let kind = line
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let schema = str_of(&line, "schema");
        if n == 1 && kind == "header" && schema == Some(BUNDLE_SCHEMA_V1) {
            v.replay_text_required = true;
        }
        if n == 1 && (kind != "header" || !matches!(schema, Some(BUNDLE_SCHEMA | BUNDLE_SCHEMA_V1)))
        {
            v.find(
                Some(1),
                FindingKind::MissingHeader,
                format!("the first line is not a {BUNDLE_SCHEMA} header"),
            );
        }
        if (kind == "chain_head" || kind == "manifest") && !events_done {
            events_done = true;
            v.finish_events();
        }
        match kind.as_str() {
            "header" => {
                if let Some(scope) = line.get("scope") {
                    v.whole_streams =
                        scope.get("kind").and_then(Value::as_str) != Some("time_range");
                    v.whole_journal = scope.get("kind").and_then(Value::as_str) == Some("all");
                }
                v.header_checkpoint(n, &line);
            }
            "event" => v.event(n, &line),
            "receipt" => v.receipt(n, &line),
            "replay" => v.replay(n, &line),
            "chain_head" => v.chain_head(n, &line),
            "manifest" => {
                manifest_seen = true;
                let digest = std::mem::take(&mut hasher).finish();
                let manifest = Value::Object(line);
                v.manifest(n, &manifest, &digest);
                if manifest.get("checkpoint")
                    != v.report
                        .checkpoint
                        .as_ref()
                        .map(|c| serde_json::to_value(c).unwrap_or_default())
                        .as_ref()
                    && v.report.checkpoint.is_some()
                {
                    v.find(
                        Some(n),
                        FindingKind::Untrusted,
                        "the manifest's checkpoint is not the header's".into(),
                    );
                }
                manifest_value = Some(manifest);
                continue;
            }
            other => v.find(
                Some(n),
                FindingKind::InvalidLine,
                format!("unknown line type {other:?}"),
            ),
        }
        hasher.update(&buffer);
    }
    if !events_done {
        v.finish_events();
    }
    if !manifest_seen {
        v.find(
            None,
            FindingKind::MissingManifest,
            format!("the bundle ends after line {n} without a manifest: it was truncated"),
        );
    }
    v.finish_tree(manifest_value.as_ref());
    v.report.aggregates = v.aggregates.len() as u64;
    Ok(v.report)
}

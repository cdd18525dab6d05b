//! `audit verify`: recomputes everything in a bundle and names exactly what is wrong. One pass
//! over the file; memory holds per-aggregate chain heads and, per run in the bundle, incremental
//! receipt and replay builders (not the events).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::BufRead;

use aggregates::canonical::{canonical_json, sha256_prefixed, PrefixedSha256};
use aggregates::chain::{self, EventContent};
use aggregates::receipt::receipt_canonical_sha256;
use aggregates::run::Run;
use cqrs_es::persist::SerializedEvent;
use engine::artifacts::receipt::ReceiptBuilder;
use engine::artifacts::signature::{verify_receipt_signature, ReceiptSignature};
use engine::artifacts::{ReplayWriter, RunRecordBuilder};
use serde::Serialize;
use serde_json::{Map, Value};

use engine::audit_log::leaf::event_leaf;
use engine::audit_log::merkle::{parse_hash, verify_consistency, verify_inclusion, Frontier, Hash};
use engine::audit_log::{Checkpoint, CheckpointError};

use super::bundle::BUNDLE_SCHEMA;
use super::export::manifest_digest;
use crate::replay::diff::first_divergence;

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

    fn event(&mut self, n: usize, line: &Map<String, Value>) {
        let (
            Some(aggregate_type),
            Some(aggregate_id),
            Some(sequence),
            Some(event_type),
            Some(event_version),
            Some(payload),
            Some(metadata),
        ) = (
            str_of(line, "aggregate_type"),
            str_of(line, "aggregate_id"),
            line.get("sequence").and_then(Value::as_i64),
            str_of(line, "event_type"),
            str_of(line, "event_version"),
            line.get("payload"),
            line.get("metadata"),
        )
        else {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                "an event line lacks one of its fields".into(),
            );
            return;
        };
        self.report.events += 1;
        let name = format!("{aggregate_type}/{aggregate_id}#{sequence}");
        // Commit order.
        let cursor = (
            line.get("transaction_id")
                .and_then(Value::as_i64)
                .unwrap_or(-1),
            line.get("position").and_then(Value::as_i64).unwrap_or(-1),
        );
        if let Some((t, p, at)) = self.last_cursor {
            if cursor <= (t, p) {
                self.find(
                    Some(n),
                    FindingKind::OutOfCommitOrder,
                    format!("{name} (position {}/{}) is not after line {at} (position {t}/{p}): events were reordered", cursor.0, cursor.1),
                );
            }
        }
        self.last_cursor = Some((cursor.0, cursor.1, n));
        // Content and link.
        let content = EventContent {
            aggregate_type,
            aggregate_id,
            sequence: sequence as u64,
            event_type,
            event_version,
            payload,
            metadata,
        };
        let content_hash = content.content_hash();
        let stated_content = str_of(line, "content_hash").unwrap_or_default();
        let redacted = line
            .get("redacted")
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty());
        // A redacted event discloses the content hash of its redacted form; its stored content
        // hash is then proven by its leaf, not by its fields.
        let disclosed = if redacted {
            self.report.events_redacted += 1;
            let stated = str_of(line, "disclosed_hash").unwrap_or_default();
            if stated != content_hash {
                self.find(
                    Some(n),
                    FindingKind::ContentMismatch,
                    format!("{name}: its disclosed fields hash to {content_hash}, not to its disclosed_hash {stated}: the event was altered"),
                );
            }
            content_hash.clone()
        } else {
            if stated_content != content_hash {
                self.find(
                    Some(n),
                    FindingKind::ContentMismatch,
                    format!("{name}: its fields hash to {content_hash}, not to its content_hash {stated_content}: the event was altered"),
                );
            }
            content_hash.clone()
        };
        let prev = str_of(line, "prev_chain_hash");
        let chain_hash = str_of(line, "chain_hash").unwrap_or_default().to_owned();
        self.prove(n, &name, line, &chain_hash, &disclosed);
        let linked = chain::chain_hash(prev, stated_content);
        if linked != chain_hash {
            self.find(Some(n), FindingKind::ChainBroken, format!("{name}: chain_hash {chain_hash} does not follow from its prev_chain_hash and content_hash"));
        }
        if metadata.get("recorded_at").and_then(Value::as_str) != str_of(line, "recorded_at") {
            self.find(
                Some(n),
                FindingKind::ContentMismatch,
                format!("{name}: recorded_at differs from metadata.recorded_at"),
            );
        }
        // Sequence and chain continuity within the aggregate.
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        let mut in_order = false;
        match self.aggregates.get_mut(&key) {
            None => {
                if sequence == 1 && prev.is_some() {
                    self.find(Some(n), FindingKind::ChainBroken, format!("{name}: the first event of an aggregate must have prev_chain_hash null"));
                }
                let gaps = if sequence > 1 && self.whole_streams {
                    vec![(1, sequence - 1, n)]
                } else {
                    Vec::new()
                };
                self.aggregates.insert(
                    key.clone(),
                    AggregateState {
                        last_sequence: sequence,
                        chain_hash: chain_hash.clone(),
                        last_line: n,
                        gaps,
                    },
                );
                in_order = sequence == 1;
            }
            Some(state) => {
                let expected = state.last_sequence + 1;
                if sequence == expected {
                    if prev != Some(state.chain_hash.as_str()) {
                        let message = format!(
                            "{name}: prev_chain_hash is not the chain_hash of #{} (line {})",
                            state.last_sequence, state.last_line
                        );
                        self.report.findings.push(Finding {
                            line: Some(n),
                            kind: FindingKind::ChainBroken,
                            message,
                        });
                    }
                    state.last_sequence = sequence;
                    state.chain_hash = chain_hash.clone();
                    state.last_line = n;
                    in_order = true;
                } else if sequence > expected {
                    state.gaps.push((expected, sequence - 1, n));
                    state.last_sequence = sequence;
                    state.chain_hash = chain_hash.clone();
                    state.last_line = n;
                } else if let Some(i) = state
                    .gaps
                    .iter()
                    .position(|(from, to, _)| (*from..=*to).contains(&sequence))
                {
                    let (from, to, at) = state.gaps.remove(i);
                    if from < sequence {
                        state.gaps.push((from, sequence - 1, at));
                    }
                    if sequence < to {
                        state.gaps.push((sequence + 1, to, at));
                    }
                    let message = format!("{name} appears after #{} (line {at}): events of {aggregate_type}/{aggregate_id} were reordered", to + 1);
                    self.report.findings.push(Finding {
                        line: Some(n),
                        kind: FindingKind::ReorderedEvent,
                        message,
                    });
                } else {
                    let message = format!(
                        "{name} appears again (already seen up to #{} by line {})",
                        state.last_sequence, state.last_line
                    );
                    self.report.findings.push(Finding {
                        line: Some(n),
                        kind: FindingKind::DuplicateEvent,
                        message,
                    });
                }
            }
        }
        // Fold run events into their artifacts; receipts recorded in the journal are remembered.
        if aggregate_type == "run" {
            self.fold_run(n, aggregate_id, sequence, in_order, line, payload, metadata);
        }
        if aggregate_type == "run_receipt" {
            if let Some(sha) = payload
                .pointer("/ReceiptRecorded/canonical_json_sha256")
                .and_then(Value::as_str)
            {
                self.recorded_receipts
                    .insert(aggregate_id.to_owned(), sha.to_owned());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fold_run(
        &mut self,
        n: usize,
        run_id: &str,
        sequence: i64,
        in_order: bool,
        line: &Map<String, Value>,
        payload: &Value,
        metadata: &Value,
    ) {
        if sequence == 1 && in_order {
            self.runs.insert(
                run_id.to_owned(),
                RunState {
                    builder: RunRecordBuilder::default(),
                    receipt: None,
                    replay: None,
                    broken: None,
                    sealed: false,
                },
            );
        }
        let Some(state) = self.runs.get_mut(run_id) else {
            return;
        };
        if state.sealed {
            let message = format!(
                "run/{run_id}#{sequence} comes after the run's receipt: its receipt and replay do not cover it"
            );
            self.report.findings.push(Finding {
                line: Some(n),
                kind: FindingKind::ReceiptMismatch,
                message,
            });
            return;
        }
        if state.broken.is_some() {
            return;
        }
        if !in_order {
            state.broken = Some(format!(
                "its events are not a contiguous sequence (see #{sequence})"
            ));
            return;
        }
        let serialized = SerializedEvent {
            aggregate_id: run_id.to_owned(),
            sequence: sequence as usize,
            aggregate_type: "run".into(),
            event_type: str_of(line, "event_type").unwrap_or_default().to_owned(),
            event_version: str_of(line, "event_version").unwrap_or_default().to_owned(),
            payload: payload.clone(),
            metadata: metadata.clone(),
        };
        let decoded =
            engine::command::decode::<Run>(serialized, sequence as u64).map_err(|e| e.to_string());
        let pushed = decoded.and_then(|envelope| {
            state
                .builder
                .push(sequence as u64, &envelope.payload, metadata)
                .map_err(|e| e.to_string())
        });
        match pushed {
            Err(e) => state.broken = Some(e),
            Ok(None) => {
                if let Some(header) = state.builder.header() {
                    state.receipt = Some(ReceiptBuilder::new(header.clone()));
                    state.replay = ReplayWriter::start(header, PrefixedSha256::new()).ok();
                }
            }
            Ok(Some(event)) => {
                if let Some(receipt) = &mut state.receipt {
                    receipt.push(&event);
                }
                if let Some(replay) = &mut state.replay {
                    let _ = replay.push(&event);
                }
            }
        }
    }

    /// The header's checkpoint: trusted, or a finding that says why not.
    fn header_checkpoint(&mut self, n: usize, line: &Map<String, Value>) {
        if self.options.integrity_only {
            return;
        }
        let checkpoint = match line.get("checkpoint") {
            None | Some(Value::Null) => {
                self.find(
                    Some(n),
                    FindingKind::Untrusted,
                    "the bundle carries no checkpoint: nothing ties it to the journal (export it from a runtime with an audit key, or check it with --integrity-only)".into(),
                );
                return;
            }
            Some(value) => Checkpoint::from_json(value),
        };
        let checked = checkpoint.and_then(|cp| {
            if self.options.trusted_keys.is_empty() {
                return Err(CheckpointError::Untrusted {
                    signer: cp.signer().unwrap_or("nobody").to_owned(),
                });
            }
            cp.verify(&self.options.trusted_keys)?;
            let root = cp.root()?;
            Ok((cp, root))
        });
        match checked {
            Ok((cp, root)) => {
                if self.whole_journal {
                    self.frontier = Some(Frontier::new());
                }
                self.report.checkpoint = Some(cp.clone());
                self.checkpoint = Some((cp, root));
            }
            Err(e) => {
                let hint = if self.options.trusted_keys.is_empty() {
                    " (no trusted key: pass the runtime's audit public key with --trusted-key)"
                } else {
                    ""
                };
                self.find(
                    Some(n),
                    FindingKind::Untrusted,
                    format!("the bundle's checkpoint is not trusted: {e}{hint}"),
                );
            }
        }
    }

    /// Proves one event in the checkpoint's tree.
    fn prove(
        &mut self,
        n: usize,
        name: &str,
        line: &Map<String, Value>,
        chain_hash: &str,
        disclosed_hash: &str,
    ) {
        let Some((checkpoint, root)) = &self.checkpoint else {
            return;
        };
        let size = checkpoint.tree_size;
        let leaf = event_leaf(chain_hash, disclosed_hash);
        let Some(index) = line.get("leaf_index").and_then(Value::as_u64) else {
            self.find(
                Some(n),
                FindingKind::NotInTree,
                format!("{name}: no leaf_index: the event is not proven in the checkpoint's tree"),
            );
            return;
        };
        if let Some(frontier) = &mut self.frontier {
            if index != frontier.size() {
                let message = format!(
                    "{name}: leaf {index} where leaf {} was due: a whole-journal bundle holds every leaf in order",
                    frontier.size()
                );
                self.find(Some(n), FindingKind::NotInTree, message);
                return;
            }
            frontier.push(leaf);
            self.report.events_proven += 1;
            self.check_old_prefix(n);
            return;
        }
        let proof: Option<Vec<Hash>> =
            line.get("inclusion")
                .and_then(Value::as_array)
                .and_then(|items| {
                    items
                        .iter()
                        .map(|h| h.as_str().and_then(|h| parse_hash(h).ok()))
                        .collect()
                });
        let Some(proof) = proof else {
            self.find(
                Some(n),
                FindingKind::NotInTree,
                format!("{name}: no inclusion proof against the checkpoint"),
            );
            return;
        };
        match verify_inclusion(&leaf, index, size, &proof, root) {
            Ok(()) => self.report.events_proven += 1,
            Err(e) => self.find(
                Some(n),
                FindingKind::NotInTree,
                format!("{name}: not leaf {index} of the checkpoint's tree of {size}: {e}"),
            ),
        }
    }

    /// Whole-journal bundles: the journal at the --checkpoint size must be the one it describes.
    fn check_old_prefix(&mut self, n: usize) {
        let (Some(old), Some(frontier)) = (&self.options.old_checkpoint, &self.frontier) else {
            return;
        };
        if frontier.size() != old.tree_size || self.old_root_seen {
            return;
        }
        self.old_root_seen = true;
        let root = hex::encode(frontier.root());
        if root != old.root_hash {
            let message = format!(
                "the journal's first {} events hash to root {root}, but checkpoint {} (of {}) says {}: events before it were changed, removed or reordered",
                old.tree_size, old.tree_size, old.timestamp, old.root_hash
            );
            self.find(Some(n), FindingKind::NotAppendOnly, message);
        }
    }

    /// After the manifest: the whole-journal root, and the --checkpoint consistency.
    fn finish_tree(&mut self, manifest: Option<&Value>) {
        let Some((checkpoint, root)) = self.checkpoint.clone() else {
            return;
        };
        if let Some(frontier) = &self.frontier {
            if frontier.size() != checkpoint.tree_size || frontier.root() != root {
                let message = format!(
                    "the bundle's {} events rebuild root {}, but its checkpoint says {} events with root {}",
                    frontier.size(),
                    hex::encode(frontier.root()),
                    checkpoint.tree_size,
                    checkpoint.root_hash
                );
                self.find(None, FindingKind::NotInTree, message);
            }
        }
        let Some(old) = self.options.old_checkpoint.clone() else {
            return;
        };
        let problem = if old.journal_id != checkpoint.journal_id {
            Some(format!(
                "checkpoint {} is of journal {}, the bundle's of journal {}: the tree was rebuilt or this is another journal",
                old.tree_size, old.journal_id, checkpoint.journal_id
            ))
        } else if old.tree_size > checkpoint.tree_size {
            Some(format!(
                "the bundle's journal has {} events, fewer than the {} of checkpoint {}: events were deleted",
                checkpoint.tree_size, old.tree_size, old.timestamp
            ))
        } else if self.frontier.is_some() {
            // Checked while the leaves went past.
            None
        } else {
            let consistency = manifest.and_then(|m| m.get("consistency"));
            let from = consistency
                .and_then(|c| c.get("from"))
                .and_then(Value::as_u64);
            let proof: Option<Vec<Hash>> = consistency
                .and_then(|c| c.get("proof"))
                .and_then(Value::as_array)
                .and_then(|items| {
                    items
                        .iter()
                        .map(|h| h.as_str().and_then(|h| parse_hash(h).ok()))
                        .collect()
                });
            match (from, proof, old.root()) {
                (Some(from), Some(proof), Ok(old_root)) if from == old.tree_size => {
                    match verify_consistency(old.tree_size, checkpoint.tree_size, &old_root, &root, &proof) {
                        Ok(()) => None,
                        Err(e) => Some(format!(
                            "the bundle's checkpoint ({} events, root {}) does not extend checkpoint {} (root {}): {e}; proof [{}]",
                            checkpoint.tree_size,
                            checkpoint.root_hash,
                            old.tree_size,
                            old.root_hash,
                            proof.iter().map(hex::encode).collect::<Vec<_>>().join(", ")
                        )),
                    }
                }
                _ => Some(format!(
                    "the bundle carries no consistency proof from tree size {}: export it with --consistency-from {} (or ?consistency_from={})",
                    old.tree_size, old.tree_size, old.tree_size
                )),
            }
        };
        match problem {
            Some(message) => self.find(None, FindingKind::NotAppendOnly, message),
            None => {
                if self.frontier.is_some() && !self.old_root_seen && old.tree_size > 0 {
                    self.find(
                        None,
                        FindingKind::NotAppendOnly,
                        format!("the bundle never reached tree size {}", old.tree_size),
                    );
                } else {
                    self.report.extends = Some(old);
                }
            }
        }
    }

    fn receipt(&mut self, n: usize, line: &Map<String, Value>) {
        let Some(run_id) = str_of(line, "run_id").map(str::to_owned) else {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                "a receipt line without run_id".into(),
            );
            return;
        };
        let Some(Value::Object(receipt)) = line.get("receipt") else {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                format!("receipt of run {run_id}: not an object"),
            );
            return;
        };
        self.report.receipts_checked += 1;
        let stated = receipt
            .get("canonical_json_sha256")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let own = receipt_canonical_sha256(receipt);
        if stated != own {
            self.find(Some(n), FindingKind::ReceiptMismatch, format!("receipt of run {run_id}: its content hashes to {own}, not to its canonical_json_sha256 {stated}"));
        }
        if let Some(signature) = receipt.get("signature") {
            self.check_signature(n, &format!("receipt of run {run_id}"), signature, stated);
        }
        let Some(state) = self.runs.get_mut(&run_id) else {
            self.find(Some(n), FindingKind::ReceiptMismatch, format!("receipt of run {run_id}: the bundle does not hold that run's events from its start"));
            return;
        };
        if let Some(reason) = &state.broken {
            let message = format!("receipt of run {run_id}: cannot be recomputed: {reason}");
            self.find(Some(n), FindingKind::ReceiptMismatch, message);
            return;
        }
        state.sealed = true;
        let Some(builder) = state.receipt.take() else {
            self.find(
                Some(n),
                FindingKind::ReceiptMismatch,
                format!("receipt of run {run_id}: the run has no run.created event"),
            );
            return;
        };
        let recomputed = builder.finish(&[]).to_map();
        let mut unsigned = receipt.clone();
        unsigned.remove("signature");
        if canonical_json(&Value::Object(unsigned.clone()))
            != canonical_json(&Value::Object(recomputed.clone()))
        {
            let where_ =
                first_divergence(&Value::Object(recomputed.clone()), &Value::Object(unsigned))
                    .map(|d| {
                        format!(
                            " (first difference at {}: events give {}, receipt says {})",
                            d.path,
                            show(&d.expected),
                            show(&d.actual)
                        )
                    })
                    .unwrap_or_default();
            self.find(
                Some(n),
                FindingKind::ReceiptMismatch,
                format!("receipt of run {run_id} does not match its events{where_}"),
            );
        }
        let recomputed_sha = recomputed
            .get("canonical_json_sha256")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(recorded) = self.recorded_receipts.get(&run_id) {
            if *recorded != recomputed_sha {
                self.find(Some(n), FindingKind::ReceiptMismatch, format!("run {run_id}: the receipt recorded in the journal ({recorded}) is not the one its events give ({recomputed_sha})"));
            }
        }
    }

    fn replay(&mut self, n: usize, line: &Map<String, Value>) {
        let (Some(run_id), Some(stated), Some(text)) = (
            str_of(line, "run_id"),
            str_of(line, "replay_hash"),
            str_of(line, "replay_jsonl"),
        ) else {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                "a replay line lacks run_id, replay_hash or replay_jsonl".into(),
            );
            return;
        };
        let run_id = run_id.to_owned();
        self.report.replays_checked += 1;
        let own = sha256_prefixed(text.as_bytes());
        if own != stated {
            self.find(Some(n), FindingKind::ReplayMismatch, format!("replay of run {run_id}: its text hashes to {own}, not to its replay_hash {stated}"));
        }
        let Some(state) = self.runs.get_mut(&run_id) else {
            self.find(Some(n), FindingKind::ReplayMismatch, format!("replay of run {run_id}: the bundle does not hold that run's events from its start"));
            return;
        };
        if state.broken.is_some() {
            return;
        }
        let (Some(writer), Some(status)) = (state.replay.take(), state.builder.status()) else {
            return;
        };
        match writer.finish(status) {
            Ok(hasher) => {
                let recomputed = hasher.finish();
                if recomputed != stated {
                    self.find(Some(n), FindingKind::ReplayMismatch, format!("replay of run {run_id}: its events give replay_hash {recomputed}, the bundle says {stated}"));
                }
            }
            Err(e) => self.find(
                Some(n),
                FindingKind::ReplayMismatch,
                format!("replay of run {run_id}: {e}"),
            ),
        }
    }

    fn chain_head(&mut self, n: usize, line: &Map<String, Value>) {
        let (Some(t), Some(id), Some(sequence), Some(chain_hash)) = (
            str_of(line, "aggregate_type"),
            str_of(line, "aggregate_id"),
            line.get("sequence").and_then(Value::as_i64),
            str_of(line, "chain_hash"),
        ) else {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                "a chain_head line lacks a field".into(),
            );
            return;
        };
        match self.aggregates.get(&(t.to_owned(), id.to_owned())) {
            None => self.find(Some(n), FindingKind::MissingEvents, format!("{t}/{id}: the chain head says #{sequence} but the bundle has none of its events")),
            Some(state) if state.last_sequence < sequence => self.find(
                Some(n),
                FindingKind::MissingEvents,
                format!("{t}/{id}: the bundle ends at #{} but its chain head is #{sequence}: events are missing at the end", state.last_sequence),
            ),
            Some(state) if state.last_sequence != sequence || state.chain_hash != chain_hash => self.find(
                Some(n),
                FindingKind::HeadMismatch,
                format!("{t}/{id}: chain head #{sequence} {chain_hash} but the events end at #{} {}", state.last_sequence, state.chain_hash),
            ),
            Some(_) => {}
        }
    }

    fn check_signature(&mut self, n: usize, what: &str, signature: &Value, signed: &str) {
        let parsed: Result<ReceiptSignature, _> = serde_json::from_value(signature.clone());
        let problem = match parsed {
            Err(e) => Some(format!("{what}: malformed signature: {e}")),
            Ok(sig) if sig.signed_sha256 != signed => Some(format!(
                "{what}: the signature signs {}, not {signed}",
                sig.signed_sha256
            )),
            Ok(sig) => match verify_receipt_signature(&sig) {
                Ok(true) => {
                    if let Some(expected) = &self.expected_signer {
                        if *expected != sig.signer_pubkey {
                            Some(format!(
                                "{what}: signed by {}, expected {expected}",
                                sig.signer_pubkey
                            ))
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
                Ok(false) => Some(format!(
                    "{what}: the signature does not verify with signer_pubkey {}",
                    sig.signer_pubkey
                )),
                Err(e) => Some(format!("{what}: {e}")),
            },
        };
        if let Some(message) = problem {
            self.find(Some(n), FindingKind::BadSignature, message);
        }
    }

    fn manifest(&mut self, n: usize, manifest: &Value, bundle_sha256: &str) {
        let stated = manifest
            .get("bundle_sha256")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if stated != bundle_sha256 {
            self.find(Some(n), FindingKind::BundleHashMismatch, format!("the bytes before the manifest hash to {bundle_sha256}, the manifest says {stated}"));
        }
        let counts = manifest.get("counts");
        let expect = |key: &str| counts.and_then(|c| c.get(key)).and_then(Value::as_u64);
        for (key, actual) in [
            ("events", self.report.events),
            ("aggregates", self.aggregates.len() as u64),
            ("receipts", self.report.receipts_checked),
            ("replays", self.report.replays_checked),
        ] {
            if expect(key) != Some(actual) {
                self.find(
                    Some(n),
                    FindingKind::CountMismatch,
                    format!(
                        "the manifest counts {} {key}, the bundle holds {actual}",
                        expect(key).map_or("no".into(), |c| c.to_string())
                    ),
                );
            }
        }
        match manifest.get("signature") {
            Some(signature) => {
                let digest = manifest_digest(manifest);
                self.check_signature(n, "manifest", signature, &digest);
                self.report.signed_by = signature
                    .get("signer_pubkey")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            None if self.expected_signer.is_some() => self.find(
                Some(n),
                FindingKind::BadSignature,
                "the manifest is not signed".into(),
            ),
            None => {}
        }
    }

    fn finish_events(&mut self) {
        let mut gaps: Vec<(usize, String)> = Vec::new();
        for ((t, id), state) in &self.aggregates {
            for (from, to, at) in &state.gaps {
                let which = if from == to {
                    format!("#{from} is")
                } else {
                    format!("#{from}..#{to} are")
                };
                gaps.push((*at, format!("{t}/{id}: {which} missing before line {at}")));
            }
        }
        gaps.sort();
        for (at, message) in gaps {
            self.find(Some(at), FindingKind::MissingEvents, message);
        }
    }
}

fn show(value: &Option<Value>) -> String {
    value.as_ref().map_or("nothing".into(), |v| {
        let text = v.to_string();
        if text.len() > 200 {
            format!("{}…", text.chars().take(200).collect::<String>())
        } else {
            text
        }
    })
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
        last_cursor: None,
        whole_streams: true,
        expected_signer: options.expected_signer.clone(),
        options: options.clone(),
        checkpoint: None,
        frontier: None,
        old_root_seen: false,
        whole_journal: false,
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
        if n == 1 && (kind != "header" || str_of(&line, "schema") != Some(BUNDLE_SCHEMA)) {
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

//! Event lines: each event's content hash and chain link, its aggregate's sequence (gaps,
//! duplicates, reordering), commit order across the bundle, the chain heads at the end, and run
//! events folded into the receipt and replay they must give.

use aggregates::canonical::PrefixedSha256;
use aggregates::chain::{self, EventContent};
use aggregates::run::Run;
use cqrs_es::persist::SerializedEvent;
use engine::artifacts::receipt::ReceiptBuilder;
use engine::artifacts::{ReplayWriter, RunRecordBuilder};
use serde_json::{Map, Value};

use super::{str_of, AggregateState, Finding, FindingKind, RunState, Verifier};

impl Verifier {
    pub(super) fn event(&mut self, n: usize, line: &Map<String, Value>) {
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
                // Compared with the run's receipt whichever comes first in the bundle.
                let mismatch = self
                    .recomputed_receipts
                    .get(aggregate_id)
                    .filter(|recomputed| recomputed.as_str() != sha)
                    .map(|recomputed| format!("run {aggregate_id}: the receipt recorded in the journal ({sha}) is not the one its events give ({recomputed})"));
                if let Some(message) = mismatch {
                    self.find(Some(n), FindingKind::ReceiptMismatch, message);
                }
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

    pub(super) fn chain_head(&mut self, n: usize, line: &Map<String, Value>) {
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

    pub(super) fn finish_events(&mut self) {
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

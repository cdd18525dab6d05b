//! Receipt and replay lines: each must hash to what it states, and match the receipt and
//! REPLAY.jsonl its run's events give (and the receipt recorded in the journal).

use aggregates::canonical::{canonical_json, sha256_prefixed};
use aggregates::receipt::receipt_canonical_sha256;
use serde_json::{Map, Value};

use super::{str_of, FindingKind, Verifier};
use crate::replay::diff::first_divergence;

impl Verifier {
    pub(super) fn receipt(&mut self, n: usize, line: &Map<String, Value>) {
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

    pub(super) fn replay(&mut self, n: usize, line: &Map<String, Value>) {
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

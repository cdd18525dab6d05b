//! Receipt and replay lines: each must hash to what it states, and match the receipt and
//! REPLAY.jsonl hash its run's events give (and the receipt recorded in the journal). A v1 replay
//! line's REPLAY.jsonl text must also hash to its `replay_hash`.

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
        // A receipt recorded after this line is compared when its event comes.
        self.recomputed_receipts.insert(run_id, recomputed_sha);
    }

    pub(super) fn replay(&mut self, n: usize, line: &Map<String, Value>) {
        // v2 bundles carry the hash only; v1 bundles also the text, which must hash to it.
        let text = str_of(line, "replay_jsonl");
        let (Some(run_id), Some(stated)) = (str_of(line, "run_id"), str_of(line, "replay_hash"))
        else {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                "a replay line lacks run_id or replay_hash".into(),
            );
            return;
        };
        if text.is_none() && self.replay_text_required {
            self.find(
                Some(n),
                FindingKind::InvalidLine,
                "a replay line of a v1 bundle lacks replay_jsonl".into(),
            );
            return;
        }
        let run_id = run_id.to_owned();
        self.report.replays_checked += 1;
        if let Some(text) = text {
            let own = sha256_prefixed(text.as_bytes());
            if own != stated {
                self.find(Some(n), FindingKind::ReplayMismatch, format!("replay of run {run_id}: its text hashes to {own}, not to its replay_hash {stated}"));
            }
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

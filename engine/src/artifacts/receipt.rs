//! `openagents.receipt.v1`: a machine-verifiable attestation of what a run did.
//!
//! Extraction rules (documented in `docs/receipts-and-replay.md`), all from the run's stream:
//! - `tool_call` frame (`tool_call_id`, `name`, optional `arguments`/`params`, `side_effects`)
//!   opens a tool call; the `tool_result` frame with the same `tool_call_id` (optional
//!   `output`/`result`, `ok`/`is_error`, `error`, `latency_ms`, `side_effects`) closes it. The
//!   original runtime's single `tool` frame (`tool`, `params`/`params_hash`, `output_hash`,
//!   `latency_ms`, `side_effects`, `ok`, `error`) is accepted as a complete call.
//! - `verification` frame: `command`, `exit_code`, optional `cwd`, `duration_ms`.
//! - `payment` frame: `rail`, `asset_id`, `amount_msats`, `payment_proof`, optional `job_hash`,
//!   `status` (default `released`); plus settled payments the Lightning lane reports for the run.
//!
//! `canonical_json_sha256` is bare hex SHA-256 over the canonical JSON of the receipt without
//! `canonical_json_sha256` and `signature`.

use std::collections::HashMap;
use std::io;

use aggregates::canonical::{hash_canonical, prefixed_hex, write_array_with};
use aggregates::receipt::RECEIPT_SCHEMA;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::record::{RunHeader, RunRecord, RunStreamEvent};
use super::rendered::RenderedEvent;
use super::signature::ReceiptSignature;
use super::trajectory::TrajectoryHasher;

/// Payment statuses that count towards `metrics.payments_msats_total`.
pub const SETTLED_PAYMENT_STATUSES: [&str; 4] = ["released", "settled", "succeeded", "paid"];

/// True for the stream event types that count as a tool call.
pub fn is_tool_call(event_type: &str) -> bool {
    event_type == "tool_call" || event_type == "tool"
}

/// The receipt, field order as served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub schema: String,
    pub session_id: String,
    pub trajectory_hash: String,
    pub policy_bundle_id: String,
    pub created_at: String,
    pub event_count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub tool_calls: Vec<ToolCallReceipt>,
    pub verification: Vec<VerificationReceipt>,
    pub payments: Vec<PaymentReceipt>,
    pub metrics: ReceiptMetrics,
    pub canonical_json_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ReceiptSignature>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiptMetrics {
    pub tool_calls: u64,
    pub tool_latency_ms_total: u64,
    /// `null` without verification entries, else whether every `exit_code` is 0.
    pub verification_passed: Option<bool>,
    pub payments_msats_total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallReceipt {
    pub tool: String,
    pub params_hash: String,
    /// `null` while the call has no result.
    pub output_hash: Option<String>,
    pub latency_ms: u64,
    pub side_effects: Vec<String>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    pub call_seq: u64,
    pub result_seq: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationReceipt {
    pub command: String,
    pub exit_code: i64,
    pub cwd: Option<String>,
    pub duration_ms: Option<u64>,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    pub rail: String,
    pub asset_id: String,
    pub amount_msats: u64,
    pub payment_proof: Value,
    pub session_id: String,
    pub trajectory_hash: String,
    pub policy_bundle_id: String,
    pub job_hash: Option<String>,
    pub status: String,
    /// The run seq of the `payment` frame; `null` for payments reported by the Lightning lane.
    pub seq: Option<u64>,
}

/// A payment the Lightning lane settled for a run (added to the receipt after the frame ones).
#[derive(Clone, Debug, PartialEq)]
pub struct SettledPayment {
    pub amount_msats: u64,
    /// e.g. `{"preimage": …, "payment_hash": …}`.
    pub payment_proof: Value,
    pub job_hash: Option<String>,
}

fn str_of(payload: &Map<String, Value>, key: &str) -> Option<String> {
    payload.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn side_effects(payload: &Map<String, Value>) -> Vec<String> {
    payload
        .get("side_effects")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ok_of(payload: &Map<String, Value>) -> bool {
    match payload.get("ok").and_then(Value::as_bool) {
        Some(ok) => ok,
        None => {
            !payload
                .get("is_error")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                && payload.get("error").is_none_or(Value::is_null)
        }
    }
}

fn hash_of_first(payload: &Map<String, Value>, keys: &[&str], default: Value) -> String {
    let value = keys
        .iter()
        .find_map(|k| payload.get(*k))
        .cloned()
        .unwrap_or(default);
    hash_canonical(&value)
}

/// Builds a receipt while the run's stream goes past; memory grows only with the extracted
/// entries (tool calls, verifications, payments), not with the stream.
pub struct ReceiptBuilder {
    header: RunHeader,
    trajectory: TrajectoryHasher,
    first_seq: Option<u64>,
    last_seq: u64,
    tool_calls: Vec<ToolCallReceipt>,
    /// tool_call_id -> (index in `tool_calls`, call recorded_at) of calls without a result.
    open_calls: HashMap<String, (usize, aggregates::Timestamp)>,
    verification: Vec<VerificationReceipt>,
    payments: Vec<PaymentReceipt>,
}

impl ReceiptBuilder {
    pub fn new(header: RunHeader) -> Self {
        Self {
            header,
            trajectory: TrajectoryHasher::new(),
            first_seq: None,
            last_seq: 0,
            tool_calls: Vec::new(),
            open_calls: HashMap::new(),
            verification: Vec::new(),
            payments: Vec::new(),
        }
    }

    /// Adds the next stream event.
    pub fn push(&mut self, event: &RunStreamEvent) {
        let mut canonical = Vec::with_capacity(128);
        self.push_rendered(&RenderedEvent::render(event, &mut canonical));
    }

    /// Adds the next stream event, already rendered.
    pub fn push_rendered(&mut self, rendered: &RenderedEvent<'_>) {
        let event = rendered.event;
        self.trajectory.push_rendered(rendered);
        self.first_seq.get_or_insert(event.seq);
        self.last_seq = event.seq;
        let payload = &event.payload;
        match event.event_type.as_str() {
            "tool_call" => {
                let index = self.tool_calls.len();
                let id = str_of(payload, "tool_call_id");
                self.tool_calls.push(ToolCallReceipt {
                    tool: str_of(payload, "name").unwrap_or_else(|| "unknown".into()),
                    params_hash: hash_of_first(
                        payload,
                        &["arguments", "params"],
                        Value::Object(Map::new()),
                    ),
                    output_hash: None,
                    latency_ms: 0,
                    side_effects: side_effects(payload),
                    ok: false,
                    error: None,
                    tool_call_id: id.clone(),
                    call_seq: event.seq,
                    result_seq: None,
                });
                if let Some(id) = id {
                    self.open_calls.insert(id, (index, event.recorded_at));
                }
            }
            "tool_result" => {
                let Some(id) = str_of(payload, "tool_call_id") else {
                    return;
                };
                let Some((index, called_at)) = self.open_calls.remove(&id) else {
                    return;
                };
                let call = &mut self.tool_calls[index];
                call.output_hash = Some(hash_of_first(payload, &["output", "result"], Value::Null));
                call.latency_ms = payload
                    .get("latency_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| event.recorded_at.millis_since(called_at));
                call.side_effects.extend(side_effects(payload));
                call.ok = ok_of(payload);
                call.error = payload.get("error").filter(|e| !e.is_null()).cloned();
                call.result_seq = Some(event.seq);
            }
            "tool" => {
                let params_hash = str_of(payload, "params_hash").unwrap_or_else(|| {
                    hash_of_first(payload, &["params"], Value::Object(Map::new()))
                });
                self.tool_calls.push(ToolCallReceipt {
                    tool: str_of(payload, "tool").unwrap_or_else(|| "unknown".into()),
                    params_hash,
                    output_hash: str_of(payload, "output_hash"),
                    latency_ms: payload
                        .get("latency_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    side_effects: side_effects(payload),
                    ok: ok_of(payload),
                    error: payload.get("error").filter(|e| !e.is_null()).cloned(),
                    tool_call_id: None,
                    call_seq: event.seq,
                    result_seq: Some(event.seq),
                });
            }
            "verification" => self.verification.push(VerificationReceipt {
                command: str_of(payload, "command").unwrap_or_else(|| "unknown".into()),
                exit_code: payload
                    .get("exit_code")
                    .and_then(Value::as_i64)
                    .unwrap_or(-1),
                cwd: str_of(payload, "cwd"),
                duration_ms: payload.get("duration_ms").and_then(Value::as_u64),
                seq: event.seq,
            }),
            "payment" => self.payments.push(PaymentReceipt {
                rail: str_of(payload, "rail").unwrap_or_else(|| "unknown".into()),
                asset_id: str_of(payload, "asset_id").unwrap_or_else(|| "unknown".into()),
                amount_msats: payload
                    .get("amount_msats")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                payment_proof: payload.get("payment_proof").cloned().unwrap_or(Value::Null),
                session_id: String::new(),
                trajectory_hash: String::new(),
                policy_bundle_id: String::new(),
                job_hash: str_of(payload, "job_hash"),
                status: str_of(payload, "status").unwrap_or_else(|| "released".into()),
                seq: Some(event.seq),
            }),
            _ => {}
        }
    }

    /// The receipt (unsigned), with `settled` Lightning payments appended to `payments`.
    pub fn finish(self, settled: &[SettledPayment]) -> Receipt {
        let event_count = self.trajectory.count();
        let trajectory_hash = self.trajectory.finish();
        let header = self.header;
        let mut payments = self.payments;
        payments.extend(settled.iter().map(|p| PaymentReceipt {
            rail: "lightning".into(),
            asset_id: "BTC_LN".into(),
            amount_msats: p.amount_msats,
            payment_proof: p.payment_proof.clone(),
            session_id: String::new(),
            trajectory_hash: String::new(),
            policy_bundle_id: String::new(),
            job_hash: p.job_hash.clone(),
            status: "settled".into(),
            seq: None,
        }));
        for payment in &mut payments {
            payment.session_id = header.run_id.clone();
            payment.trajectory_hash = trajectory_hash.clone();
            payment.policy_bundle_id = header.policy_bundle_id.clone();
        }
        let metrics = ReceiptMetrics {
            tool_calls: self.tool_calls.len() as u64,
            tool_latency_ms_total: self.tool_calls.iter().map(|c| c.latency_ms).sum(),
            verification_passed: if self.verification.is_empty() {
                None
            } else {
                Some(self.verification.iter().all(|v| v.exit_code == 0))
            },
            payments_msats_total: payments
                .iter()
                .filter(|p| SETTLED_PAYMENT_STATUSES.contains(&p.status.as_str()))
                .map(|p| p.amount_msats)
                .sum(),
        };
        let mut receipt = Receipt {
            schema: RECEIPT_SCHEMA.into(),
            session_id: header.run_id,
            trajectory_hash,
            policy_bundle_id: header.policy_bundle_id,
            created_at: header.created_at.to_contract_rfc3339(),
            event_count,
            first_seq: self.first_seq.unwrap_or(0),
            last_seq: self.last_seq,
            tool_calls: self.tool_calls,
            verification: self.verification,
            payments,
            metrics,
            canonical_json_sha256: String::new(),
            signature: None,
        };
        receipt.canonical_json_sha256 = receipt.unsigned_sha256();
        receipt
    }
}

impl Receipt {
    /// The receipt as a JSON object in served field order.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self).expect("a receipt always serialises") {
            Value::Object(map) => map,
            _ => unreachable!("a struct serialises to an object"),
        }
    }

    /// Recomputes `canonical_json_sha256` from the other fields.
    pub fn computed_sha256(&self) -> String {
        self.unsigned_sha256()
    }

    /// Bare hex SHA-256 of the canonical JSON of the receipt without `canonical_json_sha256` and
    /// `signature`, streamed from the fields (what
    /// [`aggregates::receipt::receipt_canonical_sha256`] computes from
    /// [`Receipt::to_map`], without building the map: a test holds the two equal).
    fn unsigned_sha256(&self) -> String {
        // Written whole, then hashed in one call: the members are many small writes.
        let mut text = Vec::with_capacity(1024);
        self.write_unsigned_canonical(&mut text)
            .expect("writing to a Vec cannot fail");
        prefixed_hex("", &Sha256::digest(&text))
    }

    /// The canonical JSON of the unsigned receipt.
    fn write_unsigned_canonical(&self, out: &mut dyn io::Write) -> io::Result<()> {
        use canonical_members::{write_object, Member::*};
        write_object(
            out,
            &mut [
                ("schema", Str(&self.schema)),
                ("session_id", Str(&self.session_id)),
                ("trajectory_hash", Str(&self.trajectory_hash)),
                ("policy_bundle_id", Str(&self.policy_bundle_id)),
                ("created_at", Str(&self.created_at)),
                ("event_count", U64(self.event_count)),
                ("first_seq", U64(self.first_seq)),
                ("last_seq", U64(self.last_seq)),
                (
                    "tool_calls",
                    With(&|out| {
                        write_array_with(&self.tool_calls, out, |item, out| {
                            item.write_canonical(out)
                        })
                    }),
                ),
                (
                    "verification",
                    With(&|out| {
                        write_array_with(&self.verification, out, |item, out| {
                            item.write_canonical(out)
                        })
                    }),
                ),
                (
                    "payments",
                    With(&|out| {
                        write_array_with(&self.payments, out, |item, out| item.write_canonical(out))
                    }),
                ),
                ("metrics", With(&|out| self.metrics.write_canonical(out))),
            ],
        )
    }
}

impl ReceiptMetrics {
    fn write_canonical(&self, out: &mut dyn io::Write) -> io::Result<()> {
        use canonical_members::{write_object, Member::*};
        write_object(
            out,
            &mut [
                ("tool_calls", U64(self.tool_calls)),
                ("tool_latency_ms_total", U64(self.tool_latency_ms_total)),
                ("verification_passed", OptBool(self.verification_passed)),
                ("payments_msats_total", U64(self.payments_msats_total)),
            ],
        )
    }
}

impl ToolCallReceipt {
    fn write_canonical(&self, out: &mut dyn io::Write) -> io::Result<()> {
        use canonical_members::{write_object, Member::*};
        let mut members = vec![
            ("tool", Str(&self.tool)),
            ("params_hash", Str(&self.params_hash)),
            ("output_hash", OptStr(self.output_hash.as_deref())),
            ("latency_ms", U64(self.latency_ms)),
            ("side_effects", Strs(&self.side_effects)),
            ("ok", Bool(self.ok)),
            ("call_seq", U64(self.call_seq)),
            ("result_seq", OptU64(self.result_seq)),
        ];
        // Skipped when absent, as the served form skips them.
        if let Some(error) = &self.error {
            members.push(("error", Json(error)));
        }
        if let Some(id) = &self.tool_call_id {
            members.push(("tool_call_id", Str(id)));
        }
        write_object(out, &mut members)
    }
}

impl VerificationReceipt {
    fn write_canonical(&self, out: &mut dyn io::Write) -> io::Result<()> {
        use canonical_members::{write_object, Member::*};
        write_object(
            out,
            &mut [
                ("command", Str(&self.command)),
                ("exit_code", I64(self.exit_code)),
                ("cwd", OptStr(self.cwd.as_deref())),
                ("duration_ms", OptU64(self.duration_ms)),
                ("seq", U64(self.seq)),
            ],
        )
    }
}

impl PaymentReceipt {
    fn write_canonical(&self, out: &mut dyn io::Write) -> io::Result<()> {
        use canonical_members::{write_object, Member::*};
        write_object(
            out,
            &mut [
                ("rail", Str(&self.rail)),
                ("asset_id", Str(&self.asset_id)),
                ("amount_msats", U64(self.amount_msats)),
                ("payment_proof", Json(&self.payment_proof)),
                ("session_id", Str(&self.session_id)),
                ("trajectory_hash", Str(&self.trajectory_hash)),
                ("policy_bundle_id", Str(&self.policy_bundle_id)),
                ("job_hash", OptStr(self.job_hash.as_deref())),
                ("status", Str(&self.status)),
                ("seq", OptU64(self.seq)),
            ],
        )
    }
}

/// Canonical JSON of a struct written from its fields: the members are named once each, in any
/// order, and sorted by key as they are written (the same order [`write_canonical`] gives a map).
mod canonical_members {
    use std::io;

    use aggregates::canonical::{
        write_array_with, write_canonical, write_json_string, write_sorted_object,
    };
    use serde_json::Value;

    /// A member's value.
    pub(super) enum Member<'a> {
        Str(&'a str),
        OptStr(Option<&'a str>),
        U64(u64),
        OptU64(Option<u64>),
        I64(i64),
        Bool(bool),
        OptBool(Option<bool>),
        Strs(&'a [String]),
        Json(&'a Value),
        /// Written by the closure (a nested object or array).
        With(&'a dyn Fn(&mut dyn io::Write) -> io::Result<()>),
    }

    /// `{…}` with `members` sorted by key (keys distinct).
    pub(super) fn write_object(
        out: &mut dyn io::Write,
        members: &mut [(&str, Member<'_>)],
    ) -> io::Result<()> {
        write_sorted_object(members, out, |value, out| write_member(value, out))
    }

    fn write_member(value: &Member<'_>, out: &mut dyn io::Write) -> io::Result<()> {
        match value {
            Member::Str(text) | Member::OptStr(Some(text)) => write_json_string(text, out),
            Member::U64(n) | Member::OptU64(Some(n)) => write!(out, "{n}"),
            Member::I64(n) => write!(out, "{n}"),
            Member::Bool(b) | Member::OptBool(Some(b)) => {
                out.write_all(if *b { b"true" } else { b"false" })
            }
            Member::OptStr(None) | Member::OptU64(None) | Member::OptBool(None) => {
                out.write_all(b"null")
            }
            Member::Strs(items) => {
                write_array_with(items, out, |item, out| write_json_string(item, out))
            }
            Member::Json(value) => write_canonical(value, out),
            Member::With(write) => write(out),
        }
    }
}

/// The receipt of a whole run.
pub fn build_receipt(record: &RunRecord, settled: &[SettledPayment]) -> Receipt {
    let mut builder = ReceiptBuilder::new(record.header.clone());
    for event in &record.events {
        builder.push(event);
    }
    builder.finish(settled)
}

#[cfg(test)]
mod canonical_tests {
    use aggregates::receipt::receipt_canonical_sha256;
    use serde_json::json;

    use super::*;

    fn tool_call(n: u64, with_options: bool) -> ToolCallReceipt {
        ToolCallReceipt {
            tool: format!("shell \"{n}\" ✓"),
            params_hash: format!("sha256:{n:064}"),
            output_hash: with_options.then(|| "sha256:ab".into()),
            latency_ms: n * 7,
            side_effects: if with_options {
                vec!["fs.write".into(), "net\n".into()]
            } else {
                Vec::new()
            },
            ok: with_options,
            error: with_options.then(|| json!({"z": 1, "a": [{"y": null, "b": "\u{1}"}]})),
            tool_call_id: with_options.then(|| format!("call-{n}")),
            call_seq: n,
            result_seq: with_options.then_some(n + 1),
        }
    }

    fn receipt(with_options: bool) -> Receipt {
        Receipt {
            schema: RECEIPT_SCHEMA.into(),
            session_id: "run\\1".into(),
            trajectory_hash: "sha256:00".into(),
            policy_bundle_id: "policy".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            event_count: 12,
            first_seq: 1,
            last_seq: u64::MAX,
            tool_calls: vec![tool_call(1, with_options), tool_call(2, !with_options)],
            verification: vec![VerificationReceipt {
                command: "cargo test".into(),
                exit_code: -3,
                cwd: with_options.then(|| "/work".into()),
                duration_ms: with_options.then_some(9),
                seq: 4,
            }],
            payments: vec![PaymentReceipt {
                rail: "lightning".into(),
                asset_id: "BTC_LN".into(),
                amount_msats: 21_000,
                payment_proof: json!({"preimage_commitment": "x", "amount": 1.5, "list": [3, 1]}),
                session_id: "run\\1".into(),
                trajectory_hash: "sha256:00".into(),
                policy_bundle_id: "policy".into(),
                job_hash: with_options.then(|| "job".into()),
                status: "settled".into(),
                seq: with_options.then_some(5),
            }],
            metrics: ReceiptMetrics {
                tool_calls: 2,
                tool_latency_ms_total: 21,
                verification_passed: with_options.then_some(false),
                payments_msats_total: 21_000,
            },
            canonical_json_sha256: "not part of the hash".into(),
            signature: None,
        }
    }

    #[test]
    fn the_streamed_hash_is_the_hash_of_the_served_map() {
        for with_options in [true, false] {
            let mut receipt = receipt(with_options);
            let from_map = receipt_canonical_sha256(&receipt.to_map());
            assert_eq!(receipt.unsigned_sha256(), from_map, "{with_options}");
            // Neither the stored hash nor an empty list changes what the map path hashes.
            receipt.canonical_json_sha256 = String::new();
            assert_eq!(receipt.unsigned_sha256(), from_map);
            receipt.payments.clear();
            receipt.verification.clear();
            receipt.tool_calls.clear();
            assert_eq!(
                receipt.unsigned_sha256(),
                receipt_canonical_sha256(&receipt.to_map())
            );
        }
    }
}

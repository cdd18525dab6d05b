//! REPLAY.jsonl v1, the run's replay artifact:
//!
//! ```text
//! {"type":"ReplayHeader","replay_version":1,"producer":"openagents-runtime","created_at":C}
//! {"type":"SessionStart","ts":C,"session_id":R,"policy_bundle_id":P}
//! {"type":"RuntimeEvent","ts":T,"session_id":R,"seq":N,"runtime_event_type":E,"payload_hash":H,"payload":{…}}   (one per event)
//! {"type":"SessionEnd","ts":T_last|C,"session_id":R,"status":S,"confidence":F,"total_tool_calls":K}
//! ```
//! Compact JSON, fields in exactly this order, `payload` in the event's own key order (not
//! sorted), `payload_hash` = `sha256:` of the canonical payload, timestamps as
//! [`aggregates::Timestamp::to_contract_rfc3339`]; lines end with `\n`. `replay_hash` =
//! `sha256:` of the whole text. Status/confidence: succeeded → `success`/1.0, failed →
//! `failure`/0.0, canceled → `cancelled`/0.0, not terminal → `success`/0.5 (as the original
//! runtime wrote it; the 0.5 marks an open run).

use std::io::{self, Write};

use aggregates::canonical::{sha256_prefixed, write_json_string, PrefixedSha256};
use aggregates::run::RunStatus;
use aggregates::Timestamp;
use serde_json::{Map, Value};

use super::receipt::is_tool_call;
use super::record::{RunHeader, RunRecord, RunStreamEvent};
use super::rendered::RenderedEvent;

/// `producer` of the header line.
pub const PRODUCER: &str = "openagents-runtime";
/// `replay_version` written and accepted.
pub const REPLAY_VERSION: u64 = 1;

/// SessionEnd `status` of a run status.
pub fn replay_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "success",
        RunStatus::Failed => "failure",
        RunStatus::Canceled => "cancelled",
        _ => "success",
    }
}

/// SessionEnd `confidence` of a run status.
pub fn replay_confidence(status: RunStatus) -> f64 {
    match status {
        RunStatus::Succeeded => 1.0,
        RunStatus::Failed | RunStatus::Canceled => 0.0,
        _ => 0.5,
    }
}

/// Writes REPLAY.jsonl line by line as events stream past.
pub struct ReplayWriter<W: Write> {
    out: W,
    session_id: String,
    end_ts: Timestamp,
    tool_calls: u64,
}

impl<W: Write> ReplayWriter<W> {
    /// Writes the header and session start.
    ///
    /// # Errors
    /// Whatever `out` returns.
    pub fn start(header: &RunHeader, mut out: W) -> io::Result<Self> {
        let created_at = header.created_at.to_contract_rfc3339();
        out.write_all(b"{\"type\":\"ReplayHeader\",\"replay_version\":")?;
        write!(out, "{REPLAY_VERSION},\"producer\":")?;
        write_json_string(PRODUCER, &mut out)?;
        out.write_all(b",\"created_at\":")?;
        write_json_string(&created_at, &mut out)?;
        out.write_all(b"}\n{\"type\":\"SessionStart\",\"ts\":")?;
        write_json_string(&created_at, &mut out)?;
        out.write_all(b",\"session_id\":")?;
        write_json_string(&header.run_id, &mut out)?;
        out.write_all(b",\"policy_bundle_id\":")?;
        write_json_string(&header.policy_bundle_id, &mut out)?;
        out.write_all(b"}\n")?;
        Ok(Self {
            out,
            session_id: header.run_id.clone(),
            end_ts: header.created_at,
            tool_calls: 0,
        })
    }

    /// Writes one RuntimeEvent line.
    ///
    /// # Errors
    /// Whatever the sink returns.
    pub fn push(&mut self, event: &RunStreamEvent) -> io::Result<()> {
        let mut canonical = Vec::with_capacity(128);
        self.push_rendered(&RenderedEvent::render(event, &mut canonical))
    }

    /// Writes one RuntimeEvent line of an event already rendered.
    ///
    /// # Errors
    /// Whatever the sink returns.
    pub fn push_rendered(&mut self, rendered: &RenderedEvent<'_>) -> io::Result<()> {
        let event = rendered.event;
        let out = &mut self.out;
        out.write_all(b"{\"type\":\"RuntimeEvent\",\"ts\":")?;
        write_json_string(&rendered.recorded_at, out)?;
        out.write_all(b",\"session_id\":")?;
        write_json_string(&self.session_id, out)?;
        write!(out, ",\"seq\":{},\"runtime_event_type\":", event.seq)?;
        write_json_string(&event.event_type, out)?;
        out.write_all(b",\"payload_hash\":")?;
        write_json_string(&sha256_prefixed(rendered.canonical_payload), out)?;
        out.write_all(b",\"payload\":")?;
        rendered.write_payload_in_own_order(out)?;
        out.write_all(b"}\n")?;
        self.end_ts = event.recorded_at;
        if is_tool_call(&event.event_type) {
            self.tool_calls += 1;
        }
        Ok(())
    }

    /// Writes the SessionEnd line and returns the sink.
    ///
    /// # Errors
    /// Whatever the sink returns.
    pub fn finish(mut self, status: RunStatus) -> io::Result<W> {
        let out = &mut self.out;
        out.write_all(b"{\"type\":\"SessionEnd\",\"ts\":")?;
        write_json_string(&self.end_ts.to_contract_rfc3339(), out)?;
        out.write_all(b",\"session_id\":")?;
        write_json_string(&self.session_id, out)?;
        out.write_all(b",\"status\":")?;
        write_json_string(replay_status(status), out)?;
        out.write_all(b",\"confidence\":")?;
        serde_json::to_writer(&mut *out, &replay_confidence(status)).map_err(io::Error::other)?;
        writeln!(out, ",\"total_tool_calls\":{}}}", self.tool_calls)?;
        Ok(self.out)
    }
}

/// The REPLAY.jsonl text of a whole run.
pub fn render_replay(record: &RunRecord) -> String {
    let mut writer =
        ReplayWriter::start(&record.header, Vec::new()).expect("writing to a Vec cannot fail");
    for event in &record.events {
        writer.push(event).expect("writing to a Vec cannot fail");
    }
    let bytes = writer
        .finish(record.status)
        .expect("writing to a Vec cannot fail");
    String::from_utf8(bytes).expect("REPLAY.jsonl is UTF-8")
}

/// `replay_hash` of a whole run, without keeping the text.
pub fn replay_hash(record: &RunRecord) -> String {
    let mut writer =
        ReplayWriter::start(&record.header, PrefixedSha256::new()).expect("hashing cannot fail");
    for event in &record.events {
        writer.push(event).expect("hashing cannot fail");
    }
    writer
        .finish(record.status)
        .expect("hashing cannot fail")
        .finish()
}

/// A REPLAY.jsonl file, parsed back into what produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedReplay {
    pub created_at: Timestamp,
    pub session_id: String,
    pub policy_bundle_id: String,
    pub events: Vec<ParsedReplayEvent>,
    pub status: String,
    pub confidence: f64,
    pub total_tool_calls: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParsedReplayEvent {
    pub ts: Timestamp,
    pub seq: u64,
    pub runtime_event_type: String,
    pub payload_hash: String,
    pub payload: Map<String, Value>,
}

/// Why a text is not REPLAY.jsonl v1; names the line (1-based).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("REPLAY.jsonl line {line}: {message}")]
pub struct ReplayParseError {
    pub line: usize,
    pub message: String,
}

/// Parses REPLAY.jsonl v1 (header, session start, runtime events, session end).
///
/// # Errors
/// [`ReplayParseError`] naming the first offending line.
pub fn parse_replay(text: &str) -> Result<ParsedReplay, ReplayParseError> {
    let fail = |line: usize, message: String| ReplayParseError { line, message };
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 3 {
        return Err(fail(
            lines.len(),
            "needs a header, a session start and a session end".into(),
        ));
    }
    let parse = |i: usize| -> Result<Map<String, Value>, ReplayParseError> {
        match serde_json::from_str::<Value>(lines[i]) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(fail(i + 1, "not a JSON object".into())),
            Err(e) => Err(fail(i + 1, format!("invalid JSON: {e}"))),
        }
    };
    let str_field =
        |map: &Map<String, Value>, i: usize, key: &str| -> Result<String, ReplayParseError> {
            map.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| fail(i + 1, format!("missing string field {key}")))
        };
    let ts_field =
        |map: &Map<String, Value>, i: usize, key: &str| -> Result<Timestamp, ReplayParseError> {
            str_field(map, i, key)?
                .parse()
                .map_err(|e| fail(i + 1, format!("{key}: {e}")))
        };
    let expect_type =
        |map: &Map<String, Value>, i: usize, ty: &str| -> Result<(), ReplayParseError> {
            match map.get("type").and_then(Value::as_str) {
                Some(t) if t == ty => Ok(()),
                other => Err(fail(i + 1, format!("expected type {ty}, found {other:?}"))),
            }
        };
    let header = parse(0)?;
    expect_type(&header, 0, "ReplayHeader")?;
    if header.get("replay_version").and_then(Value::as_u64) != Some(REPLAY_VERSION) {
        return Err(fail(1, "replay_version must be 1".into()));
    }
    let created_at = ts_field(&header, 0, "created_at")?;
    let start = parse(1)?;
    expect_type(&start, 1, "SessionStart")?;
    let session_id = str_field(&start, 1, "session_id")?;
    let policy_bundle_id = str_field(&start, 1, "policy_bundle_id")?;
    let last = lines.len() - 1;
    let mut events = Vec::with_capacity(lines.len() - 3);
    for i in 2..last {
        let line = parse(i)?;
        expect_type(&line, i, "RuntimeEvent")?;
        let payload = match line.get("payload") {
            Some(Value::Object(map)) => map.clone(),
            _ => return Err(fail(i + 1, "payload must be an object".into())),
        };
        events.push(ParsedReplayEvent {
            ts: ts_field(&line, i, "ts")?,
            seq: line
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| fail(i + 1, "missing seq".into()))?,
            runtime_event_type: str_field(&line, i, "runtime_event_type")?,
            payload_hash: str_field(&line, i, "payload_hash")?,
            payload,
        });
    }
    let end = parse(last)?;
    expect_type(&end, last, "SessionEnd")?;
    Ok(ParsedReplay {
        created_at,
        session_id,
        policy_bundle_id,
        events,
        status: str_field(&end, last, "status")?,
        confidence: end
            .get("confidence")
            .and_then(Value::as_f64)
            .ok_or_else(|| fail(last + 1, "missing confidence".into()))?,
        total_tool_calls: end
            .get("total_tool_calls")
            .and_then(Value::as_u64)
            .ok_or_else(|| fail(last + 1, "missing total_tool_calls".into()))?,
    })
}

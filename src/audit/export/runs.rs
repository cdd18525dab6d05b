//! Runs whose stream starts in the bundle: each event folded into the run's receipt and replay
//! as it goes past, and the `receipt` and `replay` lines written when the run ends.

use std::collections::HashMap;

use aggregates::canonical::write_json_string;
use aggregates::run::{Run, RunEvent, RUN_EVENT_VERSION};
use anyhow::{anyhow, Context};
use cqrs_es::persist::SerializedEvent;
use engine::artifacts::{RunArtifactsBuilder, RunRecordBuilder};
use serde_json::{Map, Value};
use tokio::io::AsyncWrite;

use super::heads::name;
use super::options::ExportOptions;
use super::writer::LineWriter;
use crate::audit::source::AuditRow;

/// A run being exported whose stream started in the bundle.
#[derive(Default)]
pub(super) struct OpenRun {
    record: RunRecordBuilder,
    pub(super) artifacts: Option<RunArtifactsBuilder<Vec<u8>>>,
}

/// The run event of `row` for its run's artifacts. `payload` is the parsed stored payload when
/// the caller has it; otherwise a current-version event is deserialised straight from the stored
/// text (what upcasting and decoding the parsed value give, without building the value first), and
/// anything else, including text that does not deserialise that way, goes through
/// [`engine::command::decode`] as before. The outer error is stored text that is not JSON (the
/// export fails, as it always did); the inner one an event that does not decode (the run is
/// exported without artifacts).
pub(super) fn run_event(
    row: &AuditRow,
    payload: Option<Value>,
) -> anyhow::Result<anyhow::Result<RunEvent>> {
    if payload.is_none() && row.event_version == RUN_EVENT_VERSION {
        if let Ok(event) = serde_json::from_str::<RunEvent>(&row.payload) {
            return Ok(Ok(event));
        }
    }
    let payload = match payload {
        Some(payload) => payload,
        None => serde_json::from_str(&row.payload)
            .with_context(|| format!("payload of {}", name(row)))?,
    };
    let serialized = SerializedEvent {
        aggregate_id: row.aggregate_id.clone(),
        sequence: row.sequence as usize,
        aggregate_type: row.aggregate_type.clone(),
        event_type: row.event_type.clone(),
        event_version: row.event_version.clone(),
        payload,
        // Decoding reads the payload only; the run's metadata is read below, as stored.
        metadata: Value::Object(Map::new()),
    };
    Ok(engine::command::decode::<Run>(serialized, row.sequence as u64).map(|e| e.payload))
}

/// Folds one run event into its open run; `Ok(true)` when the run has reached a terminal state
/// (its stream is complete: a terminal run accepts no further events).
pub(super) fn fold_run(
    open_runs: &mut HashMap<String, OpenRun>,
    row: &AuditRow,
    event: RunEvent,
    metadata: &Value,
) -> anyhow::Result<bool> {
    let run = open_runs
        .get_mut(&row.aggregate_id)
        .expect("only open runs are folded");
    match run
        .record
        .push_owned(row.sequence as u64, event, metadata)?
    {
        None => {
            let header = run.record.header().expect("set by run.created");
            run.artifacts = Some(RunArtifactsBuilder::start(header, Vec::new())?);
            Ok(false)
        }
        Some(event) => {
            if let Some(artifacts) = &mut run.artifacts {
                artifacts.push(&event)?;
            }
            Ok(run.record.status().is_some_and(|s| s.is_terminal()))
        }
    }
}

/// Writes a run's `receipt` and `replay` lines.
pub(super) async fn write_artifacts<W: AsyncWrite + Unpin>(
    w: &mut LineWriter<W>,
    run_id: &str,
    run: OpenRun,
    options: &ExportOptions,
) -> anyhow::Result<()> {
    let (Some(artifacts), Some(status)) = (run.artifacts, run.record.status()) else {
        return Ok(());
    };
    let (mut receipt, replay) = artifacts.finish(status, &[])?;
    if let Some(signer) = &options.signer {
        receipt.signature = Some(
            signer
                .sign_sha256_hex(&receipt.canonical_json_sha256)
                .map_err(|e| anyhow!("sign a receipt: {e}"))?,
        );
    }
    let buf = &mut w.buffer;
    buf.extend_from_slice(b"{\"type\":\"receipt\",\"run_id\":");
    write_json_string(run_id, buf)?;
    buf.extend_from_slice(b",\"receipt\":");
    serde_json::to_writer(&mut *buf, &receipt)?;
    buf.push(b'}');
    w.end_line().await?;
    let replay_hash = aggregates::canonical::sha256_prefixed(&replay);
    let text = std::str::from_utf8(&replay).context("REPLAY.jsonl is UTF-8")?;
    let buf = &mut w.buffer;
    buf.extend_from_slice(b"{\"type\":\"replay\",\"run_id\":");
    write_json_string(run_id, buf)?;
    buf.extend_from_slice(b",\"replay_hash\":");
    write_json_string(&replay_hash, buf)?;
    buf.extend_from_slice(b",\"replay_jsonl\":");
    write_json_string(text, buf)?;
    buf.push(b'}');
    w.end_line().await
}

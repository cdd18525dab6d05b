//! Runs whose stream starts in the bundle: each event folded into the run's receipt and replay
//! hash as it goes past, and the `receipt` and `replay` lines written when the run ends. The
//! REPLAY.jsonl text is hashed as it is produced and not kept: the bundle carries its hash (the
//! text is the events', re-rendered; `audit verify` renders it again and compares).

use std::io::BufWriter;

use aggregates::canonical::{write_json_string, PrefixedSha256};
use aggregates::run::{Run, RunEvent, RUN_EVENT_VERSION};
use anyhow::{anyhow, Context};
use cqrs_es::persist::SerializedEvent;
use engine::artifacts::record::MetadataLookup;
use engine::artifacts::{RunArtifactsBuilder, RunRecordBuilder};
use serde_json::{Map, Value};

use super::heads::name;
use super::options::ExportOptions;
use super::FastMap;
use crate::audit::source::AuditRow;

/// The REPLAY.jsonl sink: its hash, fed in blocks rather than one call per JSON token.
type ReplayHasher = BufWriter<PrefixedSha256>;
/// Bytes buffered per open run before they are hashed.
const REPLAY_HASH_BUFFER: usize = 1024;

/// A run being exported whose stream started in the bundle.
#[derive(Default)]
pub(super) struct OpenRun {
    record: RunRecordBuilder,
    /// The receipt builder and the replay's running hash, from `run.created` on.
    pub(super) artifacts: Option<RunArtifactsBuilder<ReplayHasher>>,
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
pub(super) fn fold_run<M: MetadataLookup + ?Sized>(
    open_runs: &mut FastMap<String, OpenRun>,
    row: &AuditRow,
    event: RunEvent,
    metadata: &M,
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
            run.artifacts = Some(RunArtifactsBuilder::start(
                header,
                BufWriter::with_capacity(REPLAY_HASH_BUFFER, PrefixedSha256::new()),
            )?);
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

/// Appends a run's `receipt` and `replay` lines to `out`.
///
/// # Errors
/// When signing fails.
pub(super) fn write_artifacts(
    out: &mut Vec<u8>,
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
    out.extend_from_slice(b"{\"type\":\"receipt\",\"run_id\":");
    write_json_string(run_id, out)?;
    out.extend_from_slice(b",\"receipt\":");
    serde_json::to_writer(&mut *out, &receipt)?;
    out.extend_from_slice(b"}\n");
    let replay_hash = replay
        .into_inner()
        .map_err(|e| anyhow!("hash the replay: {}", e.error()))?
        .finish();
    out.extend_from_slice(b"{\"type\":\"replay\",\"run_id\":");
    write_json_string(run_id, out)?;
    out.extend_from_slice(b",\"replay_hash\":");
    write_json_string(&replay_hash, out)?;
    out.extend_from_slice(b"}\n");
    Ok(())
}

//! Writing an audit bundle in one pass: events streamed from the journal page by page; each run
//! whose stream starts in the bundle folded into its receipt and replay as its events go past,
//! written right after the event that ends it (runs still open at the end follow the events);
//! then the chain heads and the manifest. Memory does not grow with the number of events: one page
//! of rows, one chain head (~150 bytes) per aggregate, and the artifacts of the runs open at the
//! same time (their REPLAY.jsonl text so far).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use aggregates::canonical::{hash_canonical, sha256_hex, write_json_string, PrefixedSha256};
use aggregates::chain::{self, EventContent};
use aggregates::run::{Run, RunEvent, RUN_EVENT_VERSION};
use aggregates::Timestamp;
use anyhow::{anyhow, bail, Context};
use cqrs_es::persist::SerializedEvent;
use engine::artifacts::{ReceiptSigner, RunArtifactsBuilder, RunRecordBuilder};
use engine::audit_log::leaf::{disclose, may_hold_secrets};
use engine::audit_log::{AuditKey, AuditStore, Checkpoint};
use engine::Database;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::bundle::{Scope, BUNDLE_SCHEMA};
use super::source::{aggregate_rows, AuditRow, RowFilter, RowPages};

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub scope: Scope,
    /// Signs the receipts and the manifest.
    pub signer: Option<ReceiptSigner>,
    /// `CARGO_PKG_VERSION` of the exporting binary.
    pub runtime_version: String,
    pub exported_at: Timestamp,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Recompute every event's content hash and chain link while exporting and count stored
    /// hashes that do not match (the bundle always carries the stored values, so `audit verify`
    /// names them too).
    pub verify_stored: bool,
    /// Which checkpoint the bundle is cut at and proven against.
    pub cut: Cut,
    /// Also carry the consistency proof from this tree size to the bundle's checkpoint (what
    /// `audit verify --checkpoint OLD.json` needs for a bundle that is not the whole journal).
    pub consistency_from: Option<u64>,
}

/// Which checkpoint an export is cut at.
#[derive(Clone, Debug)]
pub enum Cut {
    /// Catch the tree up with the journal and sign a checkpoint of it now (needs the audit key):
    /// the bundle holds every event committed when it began.
    Fresh(AuditKey),
    /// The latest stored checkpoint: events after it are left out.
    Latest,
    /// No checkpoint and no proofs: the bundle only agrees with itself.
    IntegrityOnly,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSummary {
    pub events: u64,
    pub aggregates: u64,
    pub runs: u64,
    /// Stored hashes that do not match their recomputation (with `verify_stored`).
    pub stored_hash_mismatches: u64,
    pub bundle_sha256: String,
    pub bytes: u64,
    /// Runs whose events could not be decoded: exported without receipt and replay.
    pub runs_without_artifacts: u64,
    /// Events whose secret fields were replaced by commitments.
    pub redacted_events: u64,
    /// The checkpoint the bundle was cut at.
    pub checkpoint: Option<Checkpoint>,
}

/// Buffers lines, hashes them and writes them out in large chunks.
/// Buffers lines and writes them out in large chunks, hashing each chunk on a blocking thread
/// while the next one is being produced.
struct LineWriter<W> {
    out: W,
    buffer: Vec<u8>,
    /// The bundle hash so far: either at hand, or inside the task hashing the last chunk. The task
    /// owns it until it is awaited at the next flush (or at [`LineWriter::finish_hash`]).
    hasher: Hashing,
    bytes: u64,
}

enum Hashing {
    Idle(PrefixedSha256),
    Busy(tokio::task::JoinHandle<PrefixedSha256>),
}

impl Hashing {
    async fn take(self) -> anyhow::Result<PrefixedSha256> {
        match self {
            Hashing::Idle(hasher) => Ok(hasher),
            Hashing::Busy(task) => task.await.context("hash task"),
        }
    }
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    async fn end_line(&mut self) -> anyhow::Result<()> {
        self.buffer.push(b'\n');
        if self.buffer.len() >= 256 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk: Arc<[u8]> = Arc::from(std::mem::take(&mut self.buffer));
        self.buffer.reserve(512 * 1024);
        let previous = std::mem::replace(&mut self.hasher, Hashing::Idle(PrefixedSha256::new()));
        let mut hasher = previous.take().await?;
        let to_hash = chunk.clone();
        self.hasher = Hashing::Busy(tokio::task::spawn_blocking(move || {
            hasher.update(&to_hash);
            hasher
        }));
        self.bytes += chunk.len() as u64;
        self.out
            .write_all(&chunk)
            .await
            .context("write the bundle")?;
        Ok(())
    }

    /// Flushes and returns the hash of everything written.
    async fn finish_hash(&mut self) -> anyhow::Result<String> {
        self.flush().await?;
        let hashing = std::mem::replace(&mut self.hasher, Hashing::Idle(PrefixedSha256::new()));
        Ok(hashing.take().await?.finish())
    }

    async fn value_line(&mut self, value: &Value) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.buffer, value)?;
        self.end_line().await
    }
}

/// The chain hash of `aggregate_type/aggregate_id` at `sequence` (for the first event of an
/// aggregate in a time-range export): the stored one, or recomputed from the aggregate's start
/// for rows written before the chain existed.
async fn chain_through(
    database: &Database,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> anyhow::Result<Option<String>> {
    let at = aggregate_rows(database, aggregate_type, aggregate_id, sequence, sequence).await?;
    if let Some(row) = at.first() {
        let metadata: Value = serde_json::from_str(&row.metadata)?;
        if let Some(stored) = metadata.get(chain::CHAIN_HASH_KEY).and_then(Value::as_str) {
            return Ok(Some(stored.to_owned()));
        }
    }
    let mut prev: Option<String> = None;
    for row in aggregate_rows(database, aggregate_type, aggregate_id, 1, sequence).await? {
        let metadata: Value = serde_json::from_str(&row.metadata)?;
        prev = Some(
            match metadata.get(chain::CHAIN_HASH_KEY).and_then(Value::as_str) {
                Some(stored) => stored.to_owned(),
                None => {
                    let payload: Value = serde_json::from_str(&row.payload)?;
                    chain::link(prev.as_deref(), &content_of(&row, &payload, &metadata)).1
                }
            },
        );
    }
    Ok(prev)
}

fn content_of<'a>(row: &'a AuditRow, payload: &'a Value, metadata: &'a Value) -> EventContent<'a> {
    EventContent {
        aggregate_type: &row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        sequence: row.sequence as u64,
        event_type: &row.event_type,
        event_version: &row.event_version,
        payload,
        metadata,
    }
}

/// Per-aggregate state while exporting.
struct Head {
    first_sequence: i64,
    last_sequence: i64,
    chain_hash: String,
}

/// The heads of the aggregates seen so far, by type then id (looked up without building a key
/// per event).
#[derive(Default)]
struct Heads {
    by_type: HashMap<String, HashMap<String, Head>>,
    len: u64,
}

impl Heads {
    fn get(&self, aggregate_type: &str, aggregate_id: &str) -> Option<&Head> {
        self.by_type.get(aggregate_type)?.get(aggregate_id)
    }

    /// `row` is the aggregate's latest event, with `chain_hash`.
    fn advance(&mut self, row: &AuditRow, chain_hash: String) {
        if let Some(head) = self
            .by_type
            .get_mut(&row.aggregate_type)
            .and_then(|ids| ids.get_mut(&row.aggregate_id))
        {
            head.last_sequence = row.sequence;
            head.chain_hash = chain_hash;
            return;
        }
        self.by_type
            .entry(row.aggregate_type.clone())
            .or_default()
            .insert(
                row.aggregate_id.clone(),
                Head {
                    first_sequence: row.sequence,
                    last_sequence: row.sequence,
                    chain_hash,
                },
            );
        self.len += 1;
    }

    /// Every head, sorted by type then id.
    fn sorted(&self) -> Vec<(&String, &String, &Head)> {
        let mut all: Vec<_> = self
            .by_type
            .iter()
            .flat_map(|(t, ids)| ids.iter().map(move |(id, head)| (t, id, head)))
            .collect();
        all.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        all
    }
}

/// Writes a bundle of `options.scope` from `database` to `out`.
///
/// # Errors
/// When the database or `out` fails.
pub async fn export<W: AsyncWrite + Unpin>(
    database: &Database,
    options: &ExportOptions,
    out: W,
) -> anyhow::Result<ExportSummary> {
    let mut w = LineWriter {
        out,
        buffer: Vec::with_capacity(512 * 1024),
        hasher: Hashing::Idle(PrefixedSha256::new()),
        bytes: 0,
    };
    let mut summary = ExportSummary::default();
    let store = AuditStore::new(database);
    let tree = store.state().await.context("read the audit tree")?;
    let checkpoint = match &options.cut {
        Cut::Fresh(key) => {
            store.catch_up().await.context("extend the audit tree")?;
            store
                .checkpoint_now(key)
                .await
                .context("take a checkpoint")?
        }
        Cut::Latest => store
            .latest_checkpoint()
            .await
            .context("read the checkpoint")?,
        Cut::IntegrityOnly => None,
    };
    // The whole journal is proven by rebuilding the checkpoint's root from every leaf; any other
    // scope carries an inclusion proof per event.
    let per_event_proofs = checkpoint.is_some() && options.scope != Scope::All;
    let consistency = match (&checkpoint, options.consistency_from) {
        (Some(cp), Some(from)) if from <= cp.tree_size => Some(json!({
            "from": from,
            "to": cp.tree_size,
            "proof": store
                .consistency_proof(from, cp.tree_size)
                .await
                .context("consistency proof")?
                .iter()
                .map(hex::encode)
                .collect::<Vec<_>>(),
        })),
        (Some(cp), Some(from)) => bail!(
            "--consistency-from {from} is beyond the bundle's checkpoint ({} events)",
            cp.tree_size
        ),
        _ => None,
    };
    w.value_line(&json!({
        "type": "header",
        "schema": BUNDLE_SCHEMA,
        "runtime_version": options.runtime_version,
        "chain_scheme": chain::CHAIN_SCHEME,
        "leaf_scheme": engine::audit_log::leaf::LEAF_SCHEMA,
        "scope": options.scope.to_json(),
        "exported_at": options.exported_at.to_rfc3339(),
        "checkpoint": checkpoint,
    }))
    .await?;

    let filter = RowFilter {
        aggregates: options.scope.aggregates(),
    };
    let mut pages = RowPages::start(database, filter).await?;
    let bar = if options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::with_draw_target(Some(pages.total()), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let time_range = match &options.scope {
        Scope::TimeRange { since, until } => Some((*since, *until)),
        _ => None,
    };
    let mut heads = Heads::default();
    let mut open_runs: HashMap<String, OpenRun> = HashMap::new();
    let mut first_position: Option<(i64, i64)> = None;
    let mut last_position: Option<(i64, i64)> = None;
    let mut first_recorded: Option<String> = None;
    let mut last_recorded: Option<String> = None;
    let tree_size = checkpoint.as_ref().map(|cp| cp.tree_size);
    while let Some(page) = pages.next().await? {
        bar.inc(page.len() as u64);
        // Each row's leaf; rows the checkpoint does not reach are after the cut.
        let leaves = match tree_size {
            Some(_) => {
                let positions: Vec<i64> = page.iter().map(|r| r.position).collect();
                store
                    .leaves_at_positions(&positions)
                    .await
                    .context("read the rows' leaves")?
            }
            None => HashMap::new(),
        };
        let page: Vec<(AuditRow, Option<u64>)> = page
            .into_iter()
            .filter_map(|row| {
                let leaf = leaves.get(&row.position).copied();
                match tree_size {
                    Some(size) if leaf.is_none_or(|l| l >= size) => None,
                    _ => Some((row, leaf)),
                }
            })
            .collect();
        let proofs: HashMap<u64, Vec<String>> = match (tree_size, per_event_proofs) {
            (Some(size), true) => {
                let indices: Vec<u64> = page.iter().filter_map(|(_, l)| *l).collect();
                let proofs = store
                    .inclusion_proofs(&indices, size)
                    .await
                    .context("inclusion proofs")?;
                indices
                    .into_iter()
                    .zip(proofs)
                    .map(|(i, p)| (i, p.iter().map(hex::encode).collect()))
                    .collect()
            }
            _ => HashMap::new(),
        };
        for (row, leaf_index) in page {
            let mut metadata: Map<String, Value> = serde_json::from_str(&row.metadata)
                .with_context(|| format!("metadata of {}", name(&row)))?;
            let recorded_at = metadata
                .get("recorded_at")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some((since, until)) = time_range {
                let at = recorded_at
                    .as_deref()
                    .and_then(|s| s.parse::<Timestamp>().ok());
                if !at.is_some_and(|at| at >= since && at < until) {
                    continue;
                }
            }
            let stored_content = take_str(&mut metadata, chain::CONTENT_HASH_KEY);
            let stored_chain = take_str(&mut metadata, chain::CHAIN_HASH_KEY);
            let prev = match heads.get(&row.aggregate_type, &row.aggregate_id) {
                Some(head) => Some(head.chain_hash.clone()),
                None if row.sequence <= 1 => None,
                None => {
                    chain_through(
                        database,
                        &row.aggregate_type,
                        &row.aggregate_id,
                        row.sequence - 1,
                    )
                    .await?
                }
            };
            // A run whose whole stream is in the bundle gets its receipt and replay, built while
            // its events stream past.
            let is_run = row.aggregate_type == "run";
            if is_run && row.sequence == 1 && heads.get("run", &row.aggregate_id).is_none() {
                open_runs.insert(row.aggregate_id.clone(), OpenRun::default());
            }
            let builds_artifacts = is_run && open_runs.contains_key(&row.aggregate_id);
            let hash_here =
                options.verify_stored || stored_content.is_none() || stored_chain.is_none();
            let multiline = row.payload.contains(['\n', '\r']);
            let secret = may_hold_secrets(&row.payload) || may_hold_secrets(&row.metadata);
            // The run's artifacts decode the stored text themselves (see `fold_run`): the value
            // is only parsed when the event line or its hashes need it.
            let payload: Option<Value> = if hash_here || multiline || secret {
                Some(
                    serde_json::from_str(&row.payload)
                        .with_context(|| format!("payload of {}", name(&row)))?,
                )
            } else {
                None
            };
            let metadata = Value::Object(metadata);
            let (content_hash, chain_hash) = match (&payload, stored_content, stored_chain) {
                (Some(p), stored_content, stored_chain) if hash_here => {
                    let (content, link) =
                        chain::link(prev.as_deref(), &content_of(&row, p, &metadata));
                    if stored_content.as_ref().is_some_and(|s| *s != content)
                        || stored_chain.as_ref().is_some_and(|s| *s != link)
                    {
                        summary.stored_hash_mismatches += 1;
                    }
                    (
                        stored_content.unwrap_or(content),
                        stored_chain.unwrap_or(link),
                    )
                }
                (_, Some(content), Some(link)) => (content, link),
                _ => unreachable!("hashes are computed whenever one is not stored"),
            };
            // Secrets leave only as salted commitments.
            let disclosed = match &payload {
                Some(p) if secret => {
                    let d = disclose(
                        &tree.redaction_key,
                        &content_of(&row, p, &metadata),
                        &content_hash,
                    );
                    d.redacted.is_some().then_some(d)
                }
                _ => None,
            };
            if disclosed.is_some() {
                summary.redacted_events += 1;
            }
            write_event_line(
                &mut w.buffer,
                &row,
                recorded_at.as_deref(),
                match &disclosed {
                    Some(d) => d.redacted.as_ref().map(|(p, _)| p),
                    None => payload.as_ref().filter(|_| multiline),
                },
                match &disclosed {
                    Some(d) => d.redacted.as_ref().map_or(&metadata, |(_, m)| m),
                    None => &metadata,
                },
                &content_hash,
                prev.as_deref(),
                &chain_hash,
                &EventProof {
                    redaction: disclosed
                        .as_ref()
                        .map(|d| (d.pointers.as_slice(), d.disclosed_hash.as_str())),
                    leaf_index,
                    inclusion: leaf_index.and_then(|i| proofs.get(&i)),
                },
            )?;
            w.end_line().await?;

            summary.events += 1;
            let cursor = (row.transaction_id, row.position);
            first_position.get_or_insert(cursor);
            last_position = Some(cursor);
            if first_recorded.is_none() {
                first_recorded.clone_from(&recorded_at);
            }
            if recorded_at.is_some() {
                last_recorded = recorded_at;
            }
            if builds_artifacts {
                let finished = run_event(&row, payload)?
                    .and_then(|event| fold_run(&mut open_runs, &row, event, &metadata));
                match finished {
                    Ok(false) => {}
                    Ok(true) => {
                        let run = open_runs.remove(&row.aggregate_id).expect("open");
                        write_artifacts(&mut w, &row.aggregate_id, run, options).await?;
                        summary.runs += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error.message = %e, run_id = %row.aggregate_id, "no receipt or replay for this run in the bundle");
                        open_runs.remove(&row.aggregate_id);
                        summary.runs_without_artifacts += 1;
                    }
                }
            }
            heads.advance(&row, chain_hash);
        }
    }
    bar.finish_and_clear();
    // Runs still open at the end of the range: their artifacts as of now, in id order.
    let mut still_open: Vec<(String, OpenRun)> = open_runs.into_iter().collect();
    still_open.sort_by(|a, b| a.0.cmp(&b.0));
    for (run_id, run) in still_open {
        if run.artifacts.is_some() {
            write_artifacts(&mut w, &run_id, run, options).await?;
            summary.runs += 1;
        }
    }
    for (aggregate_type, aggregate_id, head) in heads.sorted() {
        w.value_line(&json!({
            "type": "chain_head",
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "first_sequence": head.first_sequence,
            "sequence": head.last_sequence,
            "chain_hash": head.chain_hash,
        }))
        .await?;
    }
    summary.aggregates = heads.len;
    w.flush().await?;

    let bundle_sha256 = w.finish_hash().await?;
    let mut manifest = json!({
        "type": "manifest",
        "schema": BUNDLE_SCHEMA,
        "runtime_version": options.runtime_version,
        "scope": options.scope.to_json(),
        "exported_at": options.exported_at.to_rfc3339(),
        "counts": {
            "events": summary.events,
            "aggregates": summary.aggregates,
            "runs": summary.runs,
            "receipts": summary.runs,
            "replays": summary.runs,
        },
        "range": {
            "first_cursor": first_position.map(|(t, p)| json!({"transaction_id": t, "position": p})),
            "last_cursor": last_position.map(|(t, p)| json!({"transaction_id": t, "position": p})),
            "first_recorded_at": first_recorded,
            "last_recorded_at": last_recorded,
        },
        "bundle_sha256": bundle_sha256,
        "checkpoint": checkpoint,
        "consistency": consistency,
        "redacted_events": summary.redacted_events,
    });
    if let Some(signer) = &options.signer {
        let digest = manifest_digest(&manifest);
        let signature = signer
            .sign_sha256_hex(&digest)
            .map_err(|e| anyhow!("sign the manifest: {e}"))?;
        manifest["signature"] = serde_json::to_value(signature)?;
    }
    w.value_line(&manifest).await?;
    w.flush().await?;
    w.out.flush().await.context("flush the bundle")?;
    summary.bundle_sha256 = bundle_sha256;
    summary.bytes = w.bytes;
    summary.checkpoint = checkpoint;
    Ok(summary)
}

/// Hex SHA-256 of the canonical manifest without `signature`: what a manifest signature signs.
pub fn manifest_digest(manifest: &Value) -> String {
    let mut unsigned = manifest.clone();
    if let Some(object) = unsigned.as_object_mut() {
        object.remove("signature");
    }
    let prefixed = hash_canonical(&unsigned);
    prefixed.trim_start_matches("sha256:").to_owned()
}

fn take_str(metadata: &mut Map<String, Value>, key: &str) -> Option<String> {
    match metadata.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            // Not ours: keep it in the hashed metadata.
            metadata.insert(key.to_owned(), other);
            None
        }
        None => None,
    }
}

/// A run being exported whose stream started in the bundle.
#[derive(Default)]
struct OpenRun {
    record: RunRecordBuilder,
    artifacts: Option<RunArtifactsBuilder<Vec<u8>>>,
}

fn name(row: &AuditRow) -> String {
    format!(
        "{}/{}#{}",
        row.aggregate_type, row.aggregate_id, row.sequence
    )
}

/// The run event of `row` for its run's artifacts. `payload` is the parsed stored payload when
/// the caller has it; otherwise a current-version event is deserialised straight from the stored
/// text (what upcasting and decoding the parsed value give, without building the value first), and
/// anything else, including text that does not deserialise that way, goes through
/// [`engine::command::decode`] as before. The outer error is stored text that is not JSON (the
/// export fails, as it always did); the inner one an event that does not decode (the run is
/// exported without artifacts).
fn run_event(row: &AuditRow, payload: Option<Value>) -> anyhow::Result<anyhow::Result<RunEvent>> {
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
fn fold_run(
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
async fn write_artifacts<W: AsyncWrite + Unpin>(
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

/// The event line, fields in a fixed order; `payload` embeds the stored text unless a reformatted
/// value is given (stored text spanning lines).
#[allow(clippy::too_many_arguments)]
fn write_event_line(
    buf: &mut Vec<u8>,
    row: &AuditRow,
    recorded_at: Option<&str>,
    reformatted_payload: Option<&Value>,
    metadata: &Value,
    content_hash: &str,
    prev: Option<&str>,
    chain_hash: &str,
    proof: &EventProof<'_>,
) -> anyhow::Result<()> {
    write!(
        buf,
        "{{\"type\":\"event\",\"position\":{},\"transaction_id\":{},\"aggregate_type\":",
        row.position, row.transaction_id
    )?;
    write_json_string(&row.aggregate_type, buf)?;
    buf.extend_from_slice(b",\"aggregate_id\":");
    write_json_string(&row.aggregate_id, buf)?;
    write!(buf, ",\"sequence\":{},\"event_type\":", row.sequence)?;
    write_json_string(&row.event_type, buf)?;
    buf.extend_from_slice(b",\"event_version\":");
    write_json_string(&row.event_version, buf)?;
    buf.extend_from_slice(b",\"recorded_at\":");
    match recorded_at {
        Some(at) => write_json_string(at, buf)?,
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"payload\":");
    match reformatted_payload {
        Some(p) => serde_json::to_writer(&mut *buf, p)?,
        None => buf.extend_from_slice(row.payload.as_bytes()),
    }
    buf.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut *buf, metadata)?;
    buf.extend_from_slice(b",\"content_hash\":");
    write_json_string(content_hash, buf)?;
    buf.extend_from_slice(b",\"prev_chain_hash\":");
    match prev {
        Some(p) => write_json_string(p, buf)?,
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"chain_hash\":");
    write_json_string(chain_hash, buf)?;
    if let Some((pointers, disclosed_hash)) = proof.redaction {
        buf.extend_from_slice(b",\"redacted\":");
        serde_json::to_writer(&mut *buf, pointers)?;
        buf.extend_from_slice(b",\"disclosed_hash\":");
        write_json_string(disclosed_hash, buf)?;
    }
    if let Some(index) = proof.leaf_index {
        write!(buf, ",\"leaf_index\":{index}")?;
    }
    if let Some(inclusion) = proof.inclusion {
        buf.extend_from_slice(b",\"inclusion\":");
        serde_json::to_writer(&mut *buf, inclusion)?;
    }
    buf.push(b'}');
    Ok(())
}

/// What an event line carries besides the stored event: its redactions and its place in the
/// audit tree.
struct EventProof<'a> {
    /// Pointers of the redacted fields and the disclosed content hash.
    redaction: Option<(&'a [String], &'a str)>,
    leaf_index: Option<u64>,
    /// Inclusion proof against the bundle's checkpoint (hex hashes).
    inclusion: Option<&'a Vec<String>>,
}

/// Hex SHA-256 of `bytes` (re-exported for the verifier's messages).
pub fn hex_sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

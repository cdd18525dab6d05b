//! Writing an audit bundle in one pass: events streamed from the journal page by page; each run
//! whose stream starts in the bundle folded into its receipt and replay as its events go past,
//! written right after the event that ends it (runs still open at the end follow the events);
//! then the chain heads and the manifest. Memory does not grow with the number of events: one page
//! of rows, one chain head (~150 bytes) per aggregate, and the artifacts of the runs open at the
//! same time (their REPLAY.jsonl text so far).
//!
//! # Layout
//! - this file: [`export`], the loop over the journal's rows;
//! - `options.rs`: [`ExportOptions`], [`Cut`] and the [`ExportSummary`];
//! - `proofs.rs`: the checkpoint the bundle is cut at, and each page's leaves and proofs;
//! - `heads.rs`: chain hashes (stored or recomputed) and the per-aggregate heads;
//! - `runs.rs`: each run folded into its receipt and replay, and their lines;
//! - `writer.rs`: the buffered, hashing line writer and the event line's fixed field order.

mod heads;
mod options;
mod proofs;
mod runs;
mod writer;

use std::collections::HashMap;

use aggregates::canonical::{hash_canonical, sha256_hex};
use aggregates::chain;
use aggregates::Timestamp;
use anyhow::{anyhow, Context};
use engine::audit_log::leaf::{disclose, may_hold_secrets};
use engine::audit_log::AuditStore;
use engine::Database;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use self::heads::{chain_through, content_of, name, take_str, Heads};
pub use self::options::{Cut, ExportOptions, ExportSummary};
use self::proofs::{cut, prove_page};
use self::runs::{fold_run, run_event, write_artifacts, OpenRun};
use self::writer::{write_event_line, EventProof, LineWriter};
use super::bundle::{Scope, BUNDLE_SCHEMA};
use super::source::{RowFilter, RowPages};

/// Writes a bundle of `options.scope` from `database` to `out`.
///
/// # Errors
/// When the database or `out` fails.
pub async fn export<W: AsyncWrite + Unpin>(
    database: &Database,
    options: &ExportOptions,
    out: W,
) -> anyhow::Result<ExportSummary> {
    let mut w = LineWriter::new(out);
    let mut summary = ExportSummary::default();
    let store = AuditStore::new(database);
    let tree = store.state().await.context("read the audit tree")?;
    let (checkpoint, consistency) = cut(&store, options).await?;
    // The whole journal is proven by rebuilding the checkpoint's root from every leaf; any other
    // scope carries an inclusion proof per event.
    let per_event_proofs = checkpoint.is_some() && options.scope != Scope::All;
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
        let (page, proofs) = prove_page(&store, page, tree_size, per_event_proofs).await?;
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

/// Hex SHA-256 of `bytes` (re-exported for the verifier's messages).
pub fn hex_sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

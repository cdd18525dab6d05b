//! Writing an audit bundle in one pass: events streamed from the journal page by page; each run
//! whose stream starts in the bundle folded into its receipt and replay hash on a worker thread,
//! one page behind, and written after the page that follows the event that ends it (runs still
//! open at the end follow the events); then the chain heads and the manifest. Memory does not grow
//! with the number of events: two or three pages of rows, one chain head (~150 bytes) per
//! aggregate, and the builders of the runs open at the same time (a receipt builder and a running
//! hash each).
//!
//! # Layout
//! - this file: [`export`], the loop over the journal's rows;
//! - `options.rs`: [`ExportOptions`], [`Cut`] and the [`ExportSummary`];
//! - `proofs.rs`: the checkpoint the bundle is cut at, and each page's leaves and proofs;
//! - `heads.rs`: chain hashes (stored or recomputed) and the per-aggregate heads;
//! - `metadata.rs`: plain stored metadata split as text (chain hashes, `recorded_at`) without
//!   building a map;
//! - `artifacts.rs`: the worker thread that folds run events into receipts and replays,
//!   pipelined with the event lines;
//! - `runs.rs`: each run folded into its receipt and replay, and their lines;
//! - `writer.rs`: the buffered, hashing line writer and the event line's fixed field order.

mod artifacts;
mod heads;
mod metadata;
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
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use self::artifacts::{ArtifactWorker, Done, RunMetadata, RunRow};
use self::heads::{chain_through, content_of, name, Heads, ParsedMetadata};
use self::metadata::{split_metadata, SplitMetadata};
pub use self::options::{Cut, ExportOptions, ExportSummary};
use self::proofs::{cut, prove_page};
use self::writer::{write_event_line, EventProof, LineMetadata, LineWriter};
use super::bundle::{Scope, BUNDLE_SCHEMA};
use super::source::{AuditRow, RowFilter, RowPages};

/// The exporter's per-event maps (aggregate heads, open runs): looked up a few times per event,
/// so hashed with foldhash (randomly seeded per map, so ids chosen by clients cannot aim for
/// collisions they cannot see) rather than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One row's metadata as the export loop holds it; the variant says which hashes are computed.
enum RowMetadata<'t> {
    /// Split as text: plain metadata with both hashes stored, nothing recomputed or redacted.
    Split {
        split: SplitMetadata<'t>,
        content_hash: &'t str,
        chain_hash: &'t str,
    },
    /// Parsed, without its chain members: everything else. A hash that is missing (or, with
    /// `verify_stored`, either hash) is computed from the parsed content.
    Parsed {
        rest: Value,
        content_hash: Option<String>,
        chain_hash: Option<String>,
    },
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
    let mut worker = ArtifactWorker::start(options);
    let mut artifacts = Done::default();
    let mut run_rows: Vec<RunRow> = Vec::new();
    let mut first_position: Option<(i64, i64)> = None;
    let mut last_position: Option<(i64, i64)> = None;
    let mut first_recorded: Option<String> = None;
    let mut last_recorded: Option<String> = None;
    let tree_size = checkpoint.as_ref().map(|cp| cp.tree_size);
    // The current event's metadata without its chain members, when split as text.
    let mut metadata_text: Vec<u8> = Vec::with_capacity(1024);
    while let Some(mut page) = pages.next().await? {
        bar.inc(page.len() as u64);
        // Without a checkpoint there are no leaves to look up: the page's rows are taken as they
        // are and its emptied buffer goes back to the pager.
        let (proven, proofs) = match tree_size {
            Some(_) => {
                prove_page(
                    &store,
                    std::mem::take(&mut page),
                    tree_size,
                    per_event_proofs,
                )
                .await?
            }
            None => (Vec::new(), HashMap::new()),
        };
        let rows: Box<dyn Iterator<Item = (AuditRow, Option<u64>)> + Send + '_> = match tree_size {
            Some(_) => Box::new(proven.into_iter()),
            None => Box::new(page.drain(..).map(|row| (row, None))),
        };
        for (row, leaf_index) in rows {
            let secret = may_hold_secrets(&row.payload) || may_hold_secrets(&row.metadata);
            // Plain metadata with both stored hashes is split as text (no map is built); anything
            // else, and everything that is recomputed or redacted, is parsed.
            metadata_text.clear();
            let split = if options.verify_stored || secret {
                None
            } else {
                split_metadata(&row.metadata, &mut metadata_text).and_then(|split| {
                    Some(RowMetadata::Split {
                        content_hash: split.content_hash?,
                        chain_hash: split.chain_hash?,
                        split,
                    })
                })
            };
            let (mut metadata, parsed_recorded_at) = match split {
                Some(split) => (split, None),
                None => {
                    let parsed = ParsedMetadata::parse(&row)?;
                    let metadata = RowMetadata::Parsed {
                        rest: Value::Object(parsed.rest),
                        content_hash: parsed.content_hash,
                        chain_hash: parsed.chain_hash,
                    };
                    (metadata, parsed.recorded_at)
                }
            };
            let recorded_at: Option<&str> = match &metadata {
                RowMetadata::Split { split, .. } => split.recorded_at(),
                RowMetadata::Parsed { .. } => parsed_recorded_at.as_deref(),
            };
            if let Some((since, until)) = time_range {
                let at = recorded_at.and_then(|s| s.parse::<Timestamp>().ok());
                if !at.is_some_and(|at| at >= since && at < until) {
                    continue;
                }
            }
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
            // A run whose whole stream is in the bundle gets its receipt and replay, built on the
            // artifact worker from the events it is handed.
            let is_run = row.aggregate_type == "run";
            let opens_run =
                is_run && row.sequence == 1 && heads.get("run", &row.aggregate_id).is_none();
            let multiline = row.payload.contains(['\n', '\r']);
            // The run's artifacts decode the stored text themselves (see `fold_run`): the value
            // is only parsed when the event line or its hashes need it.
            let parse_payload = || {
                serde_json::from_str::<Value>(&row.payload)
                    .with_context(|| format!("payload of {}", name(&row)))
            };
            let mut payload: Option<Value> = if multiline || secret {
                Some(parse_payload()?)
            } else {
                None
            };
            let (content_hash, chain_hash) = match &mut metadata {
                // Split only with both hashes stored and nothing to recompute.
                RowMetadata::Split {
                    content_hash,
                    chain_hash,
                    ..
                } => ((*content_hash).to_owned(), (*chain_hash).to_owned()),
                RowMetadata::Parsed {
                    rest,
                    content_hash,
                    chain_hash,
                    ..
                } => match (content_hash.take(), chain_hash.take()) {
                    (Some(content), Some(link)) if !options.verify_stored => (content, link),
                    (stored_content, stored_chain) => {
                        let p = match &mut payload {
                            Some(p) => &*p,
                            None => &*payload.insert(parse_payload()?),
                        };
                        let (content, link) =
                            chain::link(prev.as_deref(), &content_of(&row, p, rest));
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
                },
            };
            // Secrets leave only as salted commitments.
            let disclosed = match (&payload, &metadata) {
                (Some(p), RowMetadata::Parsed { rest, .. }) if secret => {
                    let d = disclose(
                        &tree.redaction_key,
                        &content_of(&row, p, rest),
                        &content_hash,
                    );
                    d.redacted.is_some().then_some(d)
                }
                _ => None,
            };
            if disclosed.is_some() {
                summary.redacted_events += 1;
            }
            let line_metadata = match (&disclosed, &metadata) {
                (Some(d), RowMetadata::Parsed { rest, .. }) => {
                    LineMetadata::Value(d.redacted.as_ref().map_or(rest, |(_, m)| m))
                }
                (None, RowMetadata::Parsed { rest, .. }) => LineMetadata::Value(rest),
                (_, RowMetadata::Split { .. }) => LineMetadata::Text(&metadata_text),
            };
            write_event_line(
                &mut w.buffer,
                &row,
                recorded_at,
                match &disclosed {
                    Some(d) => d.redacted.as_ref().map(|(p, _)| p),
                    None => payload.as_ref().filter(|_| multiline),
                },
                line_metadata,
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
            if let Some(at) = recorded_at {
                if first_recorded.is_none() {
                    first_recorded = Some(at.to_owned());
                }
                match &mut last_recorded {
                    Some(last) => {
                        last.clear();
                        last.push_str(at);
                    }
                    None => last_recorded = Some(at.to_owned()),
                }
            }
            heads.advance(&row, chain_hash);
            if is_run {
                let metadata = match metadata {
                    RowMetadata::Parsed { rest, .. } => RunMetadata::Parsed(rest),
                    RowMetadata::Split { split, .. } => RunMetadata::Split(split.lookup_spans()),
                };
                run_rows.push(RunRow {
                    row,
                    payload,
                    metadata,
                    opens: opens_run,
                });
            }
        }
        pages.recycle(page);
        let spare = worker.spare_rows();
        worker.send(std::mem::replace(&mut run_rows, spare)).await?;
        // The worker folds this page while the next one is read and written; the previous
        // page's receipts and replays follow this page's events.
        worker.write_done(&mut w, 1, &mut artifacts).await?;
    }
    bar.finish_and_clear();
    // The last pages' artifacts, then the runs still open at the end of the range, in id order.
    worker.finish(&mut w, &mut artifacts).await?;
    summary.runs = artifacts.runs;
    summary.runs_without_artifacts = artifacts.runs_without_artifacts;
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

//! `replay --journal`: the drift check an operator runs after an upgrade. The live journal is
//! read in commit order and copied into a scratch journal; on the way every event's content hash
//! and chain link is recomputed, every run's receipt is rebuilt by this build from the copy and
//! compared with the receipt recorded in the live journal, and every aggregate folds without
//! error (upcasters included). The scratch copy is then projected by every read model and the
//! result compared with the live read models ([`super::read_model_drift`]): each projector at its
//! own live checkpoint, because the copy pauses there and the scratch projectors catch up first.
//! Any difference is reported and makes the command exit non-zero; what could not be compared
//! (a live database never projected, a read model built with another projection version) is
//! reported as a note. Last, the audit tree is checked against the journal
//! ([`check_audit_tree`]).

use std::collections::{BTreeMap, BTreeSet};

use aggregates::chain;
use aggregates::receipt::RunReceipt;
use aggregates::run::Run;
use aggregates::worker::Worker;
use anyhow::{bail, Context};
use engine::artifacts::load_run_record;
use engine::artifacts::recorder::receipt_for;
use engine::audit_log::merkle::{Frontier, Hash};
use engine::audit_log::store::LeafBuilder;
use engine::audit_log::AuditStore;
use engine::clock::Stamps;
use engine::command::stored_content;
use engine::journal::{AppendRequest, EventMetadata, GlobalCursor, NewEvent};
use engine::notify::JournalNotifier;
use engine::{Database, DatabaseConfig, Engine, EngineConfig, Journal};
use serde_json::Value;

use super::projection;
use super::read_model_drift::{compare, snapshot_live, LiveModel};
use super::runner::CommittedPages;
use super::scratch::{ScratchDb, ScratchTarget};
use super::ReplayArgs;

/// What the drift check found.
#[derive(Clone, Debug, Default)]
pub struct DriftReport {
    pub events: u64,
    pub aggregates: u64,
    pub runs: u64,
    pub receipts_compared: u64,
    /// Read models compared with their rebuild, and the live documents they held.
    pub read_models_compared: u64,
    pub docs_compared: u64,
    /// Audit tree leaves and checkpoints recomputed from the journal.
    pub tree_leaves_compared: u64,
    pub checkpoints_compared: u64,
    /// One readable line per problem.
    pub problems: Vec<String>,
    /// What was not compared, or compared only in part, and why; not problems.
    pub notes: Vec<String>,
}

/// Runs the drift check described in the module docs.
///
/// # Errors
/// When a database cannot be opened, or drift is found.
pub async fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let config = DatabaseConfig::from_parts(args.database_url.as_deref(), &args.data_dir, 4);
    let live = Database::connect(&config)
        .await
        .with_context(|| format!("open {}", config.describe()))?;
    let pending = live.pending_migrations().await?;
    if !pending.is_empty() {
        bail!("the live journal has unapplied migrations {pending:?}: run `migrate` first");
    }
    let scratch = ScratchDb::create(&ScratchTarget::from_url(
        args.scratch_database_url.as_deref(),
    ))
    .await?;
    let report = check_journal(&live, &scratch.database).await;
    scratch.dispose().await;
    live.close().await;
    let report = report?;
    println!(
        "checked {} events of {} aggregates, {} runs, {} recorded receipts, {} documents of {} read models",
        report.events,
        report.aggregates,
        report.runs,
        report.receipts_compared,
        report.docs_compared,
        report.read_models_compared
    );
    println!(
        "audit tree: {} leaves and {} checkpoints recomputed from the journal",
        report.tree_leaves_compared, report.checkpoints_compared
    );
    for note in &report.notes {
        println!("NOTE {note}");
    }
    if report.problems.is_empty() {
        println!("no drift");
        return Ok(());
    }
    for problem in &report.problems {
        println!("DRIFT {problem}");
    }
    bail!("{} problems found", report.problems.len())
}

fn new_engine(database: &Database) -> Engine {
    Engine::new(
        database.journal(),
        Stamps::system(),
        std::sync::Arc::new(JournalNotifier::new()),
        EngineConfig::default(),
    )
}

fn to_metadata(value: &Value) -> EventMetadata {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Projects `scratch` as far as it was copied and compares `models` with what it holds,
/// remembering for each how many live events the copy held at that point.
async fn compare_read_models(
    scratch: &Database,
    models: Vec<LiveModel>,
    report: &mut DriftReport,
    compared_at: &mut Vec<(String, u64)>,
) -> anyhow::Result<()> {
    let store = projection::catch_up(scratch).await?;
    for model in models {
        let rebuilt = store
            .all_docs(&model.spec)
            .await
            .with_context(|| format!("read the rebuilt documents of {}", model.spec.topic))?;
        report.problems.extend(compare(&model, &rebuilt));
        report.read_models_compared += 1;
        report.docs_compared += model.docs.len() as u64;
        compared_at.push((model.spec.topic.to_owned(), report.events));
    }
    Ok(())
}

/// Copies `live` into `scratch` (which must be empty) and compares; see the module docs.
///
/// # Errors
/// When either journal or projection store fails, or a scratch projector cannot fold an event.
pub async fn check_journal(live: &Database, scratch: &Database) -> anyhow::Result<DriftReport> {
    let live_journal = live.journal();
    let scratch_journal = scratch.journal();
    let mut report = DriftReport::default();
    // The live read models first: each is consistent with a checkpoint cursor at or below the
    // events the copy will hold (they were committed before the copy counts its events).
    let live_models = snapshot_live(&projection::store_of(live)).await?;
    if !live_models.projected {
        report.notes.push(
            "the live database has never been projected (no projector checkpoints): read models \
             not compared"
                .into(),
        );
    }
    report.notes.extend(live_models.notes);
    let mut boundaries: BTreeMap<GlobalCursor, Vec<LiveModel>> = BTreeMap::new();
    for model in live_models.models {
        boundaries.entry(model.cursor).or_default().push(model);
    }
    let mut compared_at = Vec::new();
    let mut heads: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut pages = CommittedPages::start(&live_journal).await?;
    while let Some(page) = pages.next().await? {
        for stored in &page {
            // Every event up to a live projector's cursor is in the copy: compare it now.
            while boundaries
                .first_key_value()
                .is_some_and(|(cursor, _)| *cursor < stored.cursor)
            {
                let (_, models) = boundaries.pop_first().expect("checked above");
                compare_read_models(scratch, models, &mut report, &mut compared_at).await?;
            }
            let e = &stored.event;
            report.events += 1;
            let key = (e.aggregate_type.clone(), e.aggregate_id.clone());
            let (prev_seq, prev_link) = heads
                .get(&key)
                .cloned()
                .map_or((0, None), |(s, l)| (s, Some(l)));
            let where_ = format!(
                "{}/{}#{} (position {})",
                e.aggregate_type, e.aggregate_id, e.sequence, stored.cursor
            );
            if e.sequence as u64 != prev_seq + 1 {
                report
                    .problems
                    .push(format!("{where_}: follows sequence {prev_seq}"));
            }
            let (content, link) = chain::link(prev_link.as_deref(), &stored_content(e));
            for (field, computed) in [
                (chain::CONTENT_HASH_KEY, &content),
                (chain::CHAIN_HASH_KEY, &link),
            ] {
                if let Some(stored_hash) = e.metadata.get(field).and_then(Value::as_str) {
                    if stored_hash != computed {
                        report.problems.push(format!("{where_}: stored {field} {stored_hash} but the row hashes to {computed}"));
                    }
                }
            }
            heads.insert(key, (e.sequence as u64, link));
            let copy = NewEvent {
                event_type: e.event_type.clone(),
                event_version: e.event_version.clone(),
                payload: e.payload.clone(),
                metadata: to_metadata(&e.metadata),
            };
            scratch_journal
                .append(AppendRequest {
                    aggregate_type: &e.aggregate_type,
                    aggregate_id: &e.aggregate_id,
                    expected_sequence: e.sequence as u64 - 1,
                    events: std::slice::from_ref(&copy),
                    idempotency: None,
                    nonce: None,
                })
                .await
                .with_context(|| format!("copy {where_}"))?;
        }
    }
    for (_, models) in std::mem::take(&mut boundaries) {
        compare_read_models(scratch, models, &mut report, &mut compared_at).await?;
    }
    for (topic, events) in compared_at {
        let behind = report.events - events;
        if behind > 0 {
            report.notes.push(format!(
                "read model {topic} is {behind} journal events behind on the live database: \
                 compared as of its checkpoint"
            ));
        }
    }
    report.aggregates = heads.len() as u64;
    let live_engine = new_engine(live);
    let scratch_engine = new_engine(scratch);
    let kinds: BTreeSet<(String, String)> = heads.into_keys().collect();
    for (aggregate_type, id) in &kinds {
        let folded = match aggregate_type.as_str() {
            "run" => scratch_engine
                .load::<Run>(id)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}")),
            "codex_worker" => scratch_engine
                .load::<Worker>(id)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}")),
            "run_receipt" => scratch_engine
                .load::<RunReceipt>(id)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}")),
            _ => Ok(()),
        };
        if let Err(e) = folded {
            report.problems.push(format!(
                "{aggregate_type}/{id}: does not fold with this build: {e}"
            ));
        }
        if aggregate_type != "run" {
            continue;
        }
        report.runs += 1;
        let record = match load_run_record(&scratch_engine, id).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(e) => {
                report.problems.push(format!("run/{id}: {e}"));
                continue;
            }
        };
        let recomputed = receipt_for(&record, None, &[]);
        let recorded = live_engine
            .load::<RunReceipt>(id)
            .await
            .map_err(|e| anyhow::anyhow!("load run_receipt/{id}: {e}"))?
            .0;
        match recorded.canonical_json_sha256 {
            Some(recorded_sha) => {
                report.receipts_compared += 1;
                if recorded_sha != recomputed.canonical_json_sha256 {
                    report.problems.push(format!(
                        "run/{id}: recorded receipt {recorded_sha} but this build computes {}",
                        recomputed.canonical_json_sha256
                    ));
                }
            }
            None if record.status.is_terminal() => {
                report.problems.push(format!(
                    "run/{id}: {} but no receipt is recorded",
                    record.status
                ));
            }
            None => {}
        }
    }
    check_audit_tree(live, &mut report).await?;
    Ok(report)
}

/// The audit tree against the journal: every stored leaf is recomputed from the event it stands
/// for (in commit order), and every stored checkpoint's root from those leaves. A row rewritten
/// after the tree saw it, a leaf or node edited in place, or a checkpoint of another history are
/// each named.
///
/// # Errors
/// When the journal or the tree cannot be read.
pub async fn check_audit_tree(live: &Database, report: &mut DriftReport) -> anyhow::Result<()> {
    const SHOWN: usize = 20;
    let store = AuditStore::new(live);
    let state = store.state().await.context("read the audit tree")?;
    let checkpoints = store.checkpoints().await.context("read the checkpoints")?;
    if state.tree_size == 0 {
        // Nothing to compare (serve has not extended the tree yet); the summary line says so.
        return Ok(());
    }
    let journal = live.journal();
    let mut builder = LeafBuilder::new(journal.clone(), state.redaction_key.clone());
    let mut frontier = Frontier::new();
    let mut pending = checkpoints.iter().peekable();
    let mut cursor = GlobalCursor::START;
    let mut index = 0u64;
    let mut mismatches = 0usize;
    while index < state.tree_size {
        let want = (state.tree_size - index).min(1_000) as usize;
        let events = journal.read_all(cursor, want).await?;
        let Some(last) = events.last() else {
            report.problems.push(format!(
                "audit tree: it has {} leaves but the journal only {index} events: events were deleted",
                state.tree_size
            ));
            break;
        };
        cursor = last.cursor;
        let stored: BTreeMap<u64, Hash> = store
            .leaf_hashes(index, index + events.len() as u64)
            .await?
            .into_iter()
            .collect();
        for event in &events {
            let leaf = builder.leaf(event).await?;
            match stored.get(&index) {
                Some(stored) if *stored == leaf => {}
                other => {
                    mismatches += 1;
                    if mismatches <= SHOWN {
                        let e = &event.event;
                        report.problems.push(format!(
                            "audit tree: leaf {index} ({}/{}#{}) is {} but the journal gives {}: the event or the tree was changed after the tree recorded it",
                            e.aggregate_type,
                            e.aggregate_id,
                            e.sequence,
                            other.map_or("missing".to_owned(), hex::encode),
                            hex::encode(leaf)
                        ));
                    }
                }
            }
            frontier.push(leaf);
            index += 1;
            while let Some(cp) = pending.next_if(|cp| cp.tree_size <= index) {
                if cp.tree_size == index && cp.root_hash != hex::encode(frontier.root()) {
                    report.problems.push(format!(
                        "audit tree: checkpoint {} has root {} but the journal gives {}",
                        cp.tree_size,
                        cp.root_hash,
                        hex::encode(frontier.root())
                    ));
                }
            }
        }
    }
    if mismatches > SHOWN {
        report.problems.push(format!(
            "audit tree: {} more leaves differ",
            mismatches - SHOWN
        ));
    }
    for cp in pending {
        report.problems.push(format!(
            "audit tree: checkpoint {} is beyond the tree's {} leaves",
            cp.tree_size, state.tree_size
        ));
    }
    report.tree_leaves_compared = index;
    report.checkpoints_compared = checkpoints.len() as u64;
    Ok(())
}

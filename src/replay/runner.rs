//! Runs one fixture on a fresh journal through the real engine and collects every output: step
//! outcomes, the journal's events in commit order, chain heads, run artifacts and summaries.
//! Outputs depend only on the fixture: the clock is manual, ids are explicit, and positions are
//! renumbered densely in commit order (PostgreSQL consumes identity values on a rejected insert;
//! SQLite does not), so both backends and every run give the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use aggregates::chain;
use aggregates::receipt::RunReceipt;
use aggregates::run::Run;
use aggregates::worker::{Worker, WorkerSummary};
use aggregates::Timestamp;
use anyhow::{anyhow, Context};
use engine::artifacts::recorder::{receipt_for, RecordError, RecordOutcome};
use engine::artifacts::{
    load_run_record, record_receipt, replay_hash, trajectory_hash, ReceiptSigner,
};
use engine::clock::{ManualClock, SequentialIds, Stamps};
use engine::command::{stored_content, CommandError, IdempotencyRequest};
use engine::journal::{AppendRequest, EventMetadata, GlobalCursor, NewEvent, StoredEvent};
use engine::notify::JournalNotifier;
use engine::{AnyJournal, CommandContext, Engine, EngineConfig, Journal, OutcomeKind};
use serde_json::{json, Map, Value};

use super::fixture::{Action, Fixture, Step, StepCommand};

/// Page size of the final journal read.
const READ_PAGE: usize = 1_000;

/// The engines of a fixture run: `a` and, on demand, `b`, sharing journal, clock and ids.
struct Engines {
    journal: AnyJournal,
    stamps: Stamps,
    notifier: Arc<JournalNotifier>,
    by_name: HashMap<String, Engine>,
}

impl Engines {
    fn get(&mut self, name: &str) -> anyhow::Result<&Engine> {
        if name != "a" && name != "b" {
            anyhow::bail!("engine must be \"a\" or \"b\", got {name:?}");
        }
        Ok(self.by_name.entry(name.to_owned()).or_insert_with(|| {
            Engine::new(
                self.journal.clone(),
                self.stamps.clone(),
                self.notifier.clone(),
                EngineConfig::default(),
            )
        }))
    }
}

fn outcome_label(kind: OutcomeKind, version: u64) -> String {
    match kind {
        OutcomeKind::Appended => format!("appended v{version}"),
        OutcomeKind::Unchanged => format!("unchanged v{version}"),
        OutcomeKind::Replayed => format!("replayed v{version}"),
    }
}

fn error_label<E: std::error::Error>(
    error: &CommandError<E>,
    reason: impl Fn(&E) -> &'static str,
) -> String {
    match error {
        CommandError::Rejected(e) => format!("rejected {}", reason(e)),
        CommandError::IdempotencyKeyReused => "rejected idempotency_key_reused".into(),
        other => format!("error {}", other.label()),
    }
}

/// What one fixture run produced.
pub struct FixtureRun {
    /// The outputs, in the shape `expected` holds.
    pub output: Value,
    /// Events in the journal at the end.
    pub event_count: usize,
}

/// Executes `fixture` against `journal` (which must be empty).
///
/// # Errors
/// When the fixture is malformed or the journal fails; rejected commands are outputs, not errors.
pub async fn run_fixture(fixture: &Fixture, journal: AnyJournal) -> anyhow::Result<FixtureRun> {
    let start = fixture
        .steps
        .iter()
        .find_map(|s| s.at)
        .unwrap_or(Timestamp::EPOCH);
    let clock = Arc::new(ManualClock::new(start, 0));
    let mut engines = Engines {
        journal: journal.clone(),
        stamps: Stamps {
            clock: clock.clone(),
            ids: Arc::new(SequentialIds::default()),
        },
        notifier: Arc::new(JournalNotifier::new()),
        by_name: HashMap::new(),
    };
    let signer = fixture
        .signing_key
        .as_deref()
        .map(ReceiptSigner::from_secret_hex)
        .transpose()
        .map_err(|e| anyhow!("signing_key: {e}"))?;
    let mut outcomes = Vec::with_capacity(fixture.steps.len());
    for (index, step) in fixture.steps.iter().enumerate() {
        if let Some(at) = step.at {
            clock.set(at);
        }
        let label = run_step(fixture, step, &mut engines, signer.as_ref())
            .await
            .with_context(|| format!("step {}", index + 1))?;
        outcomes.push(Value::String(label));
    }
    let engine = engines.get("a")?;
    let events = read_everything(&journal).await?;
    let mut output = Map::new();
    output.insert("outcomes".into(), Value::Array(outcomes));
    output.insert("events".into(), render_events(&events));
    output.insert("chain".into(), chain_report(&events));
    output.insert(
        "runs".into(),
        run_reports(engine, &events, signer.as_ref()).await?,
    );
    output.insert("workers".into(), worker_reports(engine, &events).await?);
    Ok(FixtureRun {
        output: Value::Object(output),
        event_count: events.len(),
    })
}

async fn run_step(
    fixture: &Fixture,
    step: &Step,
    engines: &mut Engines,
    signer: Option<&ReceiptSigner>,
) -> anyhow::Result<String> {
    let engine_name = step.engine.clone().unwrap_or_else(|| "a".into());
    let actor = step.actor.clone().unwrap_or_else(|| "user:fixture".into());
    let context = CommandContext {
        nonce: None,
        actor: actor.clone(),
        request_id: step.request_id.clone(),
        trace_id: None,
        idempotency: step.idempotency_key.as_ref().map(|key| IdempotencyRequest {
            scope: actor.clone(),
            key: key.clone(),
            request_hash: step.request_hash(),
        }),
    };
    if let Action::AppendRaw {
        aggregate_type,
        aggregate_id,
        event_type,
        event_version,
        payload,
        metadata,
    } = &step.action
    {
        return append_raw(
            &engines.journal,
            aggregate_type,
            aggregate_id,
            event_type,
            event_version,
            payload,
            metadata,
        )
        .await;
    }
    if let Action::RecordReceipt {} = &step.action {
        let run = step
            .run
            .as_deref()
            .ok_or_else(|| anyhow!("record_receipt needs \"run\""))?;
        let engine = engines.get(&engine_name)?;
        return Ok(receipt_label(
            record_receipt(engine, run, signer, &[]).await,
        ));
    }
    let command = step.command()?.expect("other actions are commands");
    let engine = engines.get(&engine_name)?;
    match command {
        StepCommand::Run { run_id, command } => {
            let result = engine
                .execute::<Run>(run_id.as_str(), command, &context)
                .await;
            match result {
                Ok(outcome) => {
                    let mut label = outcome_label(outcome.kind, outcome.version);
                    let terminal = outcome.summary.status.is_some_and(|s| s.is_terminal());
                    if fixture.record_receipts && outcome.kind == OutcomeKind::Appended && terminal
                    {
                        let recorded = record_receipt(engine, run_id.as_str(), signer, &[]).await;
                        label.push_str("; ");
                        label.push_str(&receipt_label(recorded));
                    }
                    Ok(label)
                }
                Err(error) => Ok(error_label(&error, |e| e.reason())),
            }
        }
        StepCommand::Worker { worker_id, command } => {
            let result = engine
                .execute::<Worker>(worker_id.as_str(), command, &context)
                .await;
            Ok(match result {
                Ok(outcome) => outcome_label(outcome.kind, outcome.version),
                Err(error) => error_label(&error, |e| e.reason()),
            })
        }
    }
}

fn receipt_label(result: Result<RecordOutcome, RecordError>) -> String {
    match result {
        Ok(RecordOutcome::Recorded(_)) => "receipt recorded".into(),
        Ok(RecordOutcome::AlreadyRecorded(_)) => "receipt unchanged".into(),
        Ok(RecordOutcome::NotTerminal) => "receipt not_terminal".into(),
        Err(RecordError::Conflict { .. }) => "receipt conflict".into(),
        Err(RecordError::NotFound) => "receipt run_not_found".into(),
        Err(other) => format!("receipt error {other}"),
    }
}

async fn append_raw(
    journal: &AnyJournal,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    metadata: &Map<String, Value>,
) -> anyhow::Result<String> {
    let mut stored = EventMetadata::new();
    for (key, value) in metadata {
        let text = value
            .as_str()
            .ok_or_else(|| anyhow!("append_raw metadata.{key} must be a string"))?;
        stored.insert(key.clone(), text.to_owned());
    }
    let expected = count_aggregate_events(journal, aggregate_type, aggregate_id).await?;
    let event = NewEvent {
        event_type: event_type.to_owned(),
        event_version: event_version.to_owned(),
        payload: payload.clone(),
        metadata: stored,
    };
    let appended = journal
        .append(AppendRequest {
            aggregate_type,
            aggregate_id,
            expected_sequence: expected,
            events: std::slice::from_ref(&event),
            idempotency: None,
            nonce: None,
        })
        .await
        .context("append_raw")?;
    Ok(format!("raw v{}", appended.last_sequence))
}

async fn count_aggregate_events(
    journal: &AnyJournal,
    aggregate_type: &str,
    aggregate_id: &str,
) -> anyhow::Result<u64> {
    // Fixtures are small: a scan of the journal is the backend-neutral way to find the last
    // sequence of an aggregate whose type no Aggregate impl names.
    let events = read_everything(journal).await?;
    Ok(events
        .iter()
        .filter(|e| {
            e.event.aggregate_type == aggregate_type && e.event.aggregate_id == aggregate_id
        })
        .map(|e| e.event.sequence as u64)
        .max()
        .unwrap_or(0))
}

/// Every event committed before the call, in commit order (see [`CommittedPages`]).
///
/// # Errors
/// When the journal fails, or its read horizon does not move for a minute.
pub async fn read_everything(journal: &AnyJournal) -> anyhow::Result<Vec<StoredEvent>> {
    let mut out = Vec::new();
    let mut pages = CommittedPages::start(journal).await?;
    while let Some(page) = pages.next().await? {
        out.extend(page);
    }
    Ok(out)
}

/// Pages through every event committed before [`CommittedPages::start`], in commit order.
///
/// The global read only returns events below the oldest running transaction of the whole
/// PostgreSQL cluster (its gap-safety horizon), so on a busy server a page can come back short or
/// empty; this waits for the horizon to pass every event counted at the start.
pub struct CommittedPages<'a> {
    journal: &'a AnyJournal,
    total: u64,
    seen: u64,
    cursor: GlobalCursor,
}

impl<'a> CommittedPages<'a> {
    /// Counts the committed events to read.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn start(journal: &'a AnyJournal) -> anyhow::Result<Self> {
        let total = journal
            .count_after(GlobalCursor::START, i64::MAX as u64)
            .await?;
        Ok(Self {
            journal,
            total,
            seen: 0,
            cursor: GlobalCursor::START,
        })
    }

    /// Events counted at the start.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The next page, or `None` once every counted event was returned.
    ///
    /// # Errors
    /// When the journal fails, or the horizon does not move for a minute (a transaction left open
    /// on the server).
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<StoredEvent>>> {
        let mut wait =
            engine::backoff::HorizonWait::new(engine::backoff::HorizonWait::DEFAULT_LIMIT);
        while self.seen < self.total {
            let page = self.journal.read_all(self.cursor, READ_PAGE).await?;
            if let Some(last) = page.last() {
                self.cursor = last.cursor;
                self.seen += page.len() as u64;
                return Ok(Some(page));
            }
            if !wait.pause().await {
                anyhow::bail!(
                    "the journal's read horizon stayed below {} of {} events for a minute \
                     (is a transaction left open on the server?)",
                    self.seen,
                    self.total
                );
            }
        }
        Ok(None)
    }
}

fn render_events(events: &[StoredEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                json!({
                    "n": i + 1,
                    "aggregate_type": e.event.aggregate_type,
                    "aggregate_id": e.event.aggregate_id,
                    "sequence": e.event.sequence,
                    "event_type": e.event.event_type,
                    "event_version": e.event.event_version,
                    "payload": e.event.payload,
                    "metadata": e.event.metadata,
                })
            })
            .collect(),
    )
}

/// Chain heads per aggregate, and every stored link that does not match its recomputation.
fn chain_report(events: &[StoredEvent]) -> Value {
    let mut heads: BTreeMap<String, String> = BTreeMap::new();
    let mut broken = Vec::new();
    for e in events {
        let key = format!("{}/{}", e.event.aggregate_type, e.event.aggregate_id);
        let prev = heads.get(&key).cloned();
        let (content, link) = chain::link(prev.as_deref(), &stored_content(&e.event));
        for (field, computed) in [
            (chain::CONTENT_HASH_KEY, &content),
            (chain::CHAIN_HASH_KEY, &link),
        ] {
            if let Some(stored) = e.event.metadata.get(field).and_then(Value::as_str) {
                if stored != computed {
                    broken.push(
                        json!({"aggregate": key, "sequence": e.event.sequence, "field": field}),
                    );
                }
            }
        }
        heads.insert(key, link);
    }
    json!({"heads": heads, "broken": broken})
}

async fn run_reports(
    engine: &Engine,
    events: &[StoredEvent],
    signer: Option<&ReceiptSigner>,
) -> anyhow::Result<Value> {
    let ids: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event.aggregate_type == "run")
        .map(|e| e.event.aggregate_id.as_str())
        .collect();
    let mut runs = Map::new();
    for id in ids {
        let report = match load_run_record(engine, id).await {
            Ok(Some(record)) => {
                let receipt = receipt_for(&record, signer, &[]);
                let (recorded, _) = engine
                    .load::<RunReceipt>(id)
                    .await
                    .map_err(|e| anyhow!("load receipt of {id}: {e}"))?;
                json!({
                    "status": record.status.as_str(),
                    "event_count": record.events.len(),
                    "trajectory_hash": trajectory_hash(&record.events),
                    "replay_hash": replay_hash(&record),
                    "recorded_receipt_sha256": recorded.canonical_json_sha256,
                    "receipt": receipt,
                })
            }
            Ok(None) => json!({"error": "run not found"}),
            Err(e) => json!({"error": e.to_string()}),
        };
        runs.insert(id.to_owned(), report);
    }
    Ok(Value::Object(runs))
}

fn worker_json(summary: &WorkerSummary, version: u64) -> Value {
    let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339());
    json!({
        "status": summary.status.map(|s| s.as_str()),
        "latest_seq": summary.latest_seq,
        "version": version,
        "lease_expires_at": summary.lease_expires_at.to_rfc3339(),
        "last_heartbeat_at": ts(summary.last_heartbeat_at),
        "started_at": ts(summary.started_at),
        "stopped_at": ts(summary.stopped_at),
    })
}

async fn worker_reports(engine: &Engine, events: &[StoredEvent]) -> anyhow::Result<Value> {
    let ids: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event.aggregate_type == "codex_worker")
        .map(|e| e.event.aggregate_id.as_str())
        .collect();
    let mut workers = Map::new();
    for id in ids {
        let report = match engine.load::<Worker>(id).await {
            Ok((summary, version)) => worker_json(&summary, version),
            Err(e) => json!({"error": e.to_string()}),
        };
        workers.insert(id.to_owned(), report);
    }
    Ok(Value::Object(workers))
}

//! The replay fixture format (`openagents.replay_fixture.v1`): a sequence of commands with
//! explicit ids and clock values, and the outputs they must produce. Documented with examples in
//! `docs/receipts-and-replay.md`.

use aggregates::canonical::hash_canonical;
use aggregates::ids::{FrameId, GuestScope, Owner, RequestId, RunId, ThreadId, UserId, WorkerId};
use aggregates::run::{Outcome as RunOutcome, RunCommand};
use aggregates::worker::WorkerCommand;
use aggregates::Timestamp;
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `schema` of a fixture file.
pub const FIXTURE_SCHEMA: &str = "openagents.replay_fixture.v1";

fn yes() -> bool {
    true
}

/// A fixture file. Unknown top-level fields are rejected.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub schema: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Record each run's receipt right after the step that makes it terminal (what the receipt
    /// recorder does live). Default true.
    #[serde(default = "yes")]
    pub record_receipts: bool,
    /// A secp256k1 secret key (hex) to sign receipts with; signatures are deterministic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    pub steps: Vec<Step>,
    /// The outputs; written by `--bless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
}

/// One command (or raw append) and how it is issued.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Step {
    /// The clock value the engine stamps the command with. Omitted: the previous step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// The run the command targets (run commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The worker the command targets (worker commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Which engine instance issues the command: `a` (default) or `b`, a second engine (another
    /// process) on the same journal with its own aggregate cache, for conflicting appends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// `user:<id>`, `guest:<scope>` or `system:<component>`; default `user:fixture`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// An Idempotency-Key, scoped to the actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub action: Action,
}

/// What a step does. Each variant is a key of the step object.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    CreateRun {
        thread_id: String,
        owner: String,
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    StartRun {
        #[serde(default = "runtime_source")]
        source: String,
    },
    AppendFrame {
        frame_id: String,
        #[serde(rename = "type")]
        frame_type: String,
        #[serde(default)]
        payload: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_seq: Option<u64>,
    },
    RequestCancel {
        reason: String,
        #[serde(default = "user_source")]
        requested_by: String,
    },
    FinishRun {
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason_class: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
    },
    RegisterWorker {
        owner: String,
        #[serde(default = "codex_adapter")]
        adapter: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace_ref: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        codex_home_ref: Option<String>,
        #[serde(default)]
        metadata: Map<String, Value>,
        lease_ttl_ms: u64,
    },
    Heartbeat {
        /// Absent: the lease the worker registered with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ttl_ms: Option<u64>,
    },
    RecordRequest {
        request_id: String,
        method: String,
        #[serde(default)]
        params: Value,
    },
    ReportEvent {
        event_type: String,
        #[serde(default)]
        payload: Map<String, Value>,
    },
    RequestStop {
        reason: String,
    },
    ExpireLease {},
    /// Writes an event straight into the journal (no engine, no chain metadata unless given):
    /// for events stored by older versions, which upcasters must read.
    AppendRaw {
        aggregate_type: String,
        aggregate_id: String,
        event_type: String,
        event_version: String,
        payload: Value,
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    /// Records the run's receipt now (when `record_receipts` is off, or to show a retry is a no-op).
    RecordReceipt {},
}

fn runtime_source() -> String {
    "runtime".into()
}

fn user_source() -> String {
    "user".into()
}

fn codex_adapter() -> String {
    "codex".into()
}

/// `user:<id>` or `guest:<scope>`.
///
/// # Errors
/// When the text is neither.
pub fn parse_owner(text: &str) -> anyhow::Result<Owner> {
    match text.split_once(':') {
        Some(("user", id)) => Ok(Owner::User(UserId::parse(id)?)),
        Some(("guest", scope)) => Ok(Owner::Guest(GuestScope::parse(scope)?)),
        _ => bail!("owner must be user:<id> or guest:<scope>, got {text:?}"),
    }
}

/// The command a step sends to a run or a worker.
pub enum StepCommand {
    Run {
        run_id: RunId,
        command: RunCommand,
    },
    Worker {
        worker_id: WorkerId,
        command: WorkerCommand,
    },
}

impl Step {
    /// The hash of what the step asks for (an idempotency request hash).
    pub fn request_hash(&self) -> String {
        hash_canonical(&serde_json::to_value(&self.action).unwrap_or(Value::Null))
    }

    fn run_id(&self) -> anyhow::Result<RunId> {
        let id = self
            .run
            .as_deref()
            .ok_or_else(|| anyhow!("a run command needs \"run\""))?;
        Ok(RunId::parse(id)?)
    }

    fn worker_id(&self) -> anyhow::Result<WorkerId> {
        let id = self
            .worker
            .as_deref()
            .ok_or_else(|| anyhow!("a worker command needs \"worker\""))?;
        Ok(WorkerId::parse(id)?)
    }

    /// The engine command of this step (`None` for raw appends and receipt recording).
    ///
    /// # Errors
    /// When an id, owner or outcome is malformed.
    pub fn command(&self) -> anyhow::Result<Option<StepCommand>> {
        let run = |command| -> anyhow::Result<Option<StepCommand>> {
            Ok(Some(StepCommand::Run {
                run_id: self.run_id()?,
                command,
            }))
        };
        let worker = |command| -> anyhow::Result<Option<StepCommand>> {
            Ok(Some(StepCommand::Worker {
                worker_id: self.worker_id()?,
                command,
            }))
        };
        match &self.action {
            Action::CreateRun {
                thread_id,
                owner,
                metadata,
            } => run(new_create_run(
                self.run_id()?,
                ThreadId::parse(thread_id.as_str())?,
                parse_owner(owner)?,
                metadata.clone(),
            )),
            Action::StartRun { source } => run(RunCommand::StartRun {
                source: source.clone(),
            }),
            Action::AppendFrame {
                frame_id,
                frame_type,
                payload,
                occurred_at,
                expected_seq,
            } => run(RunCommand::AppendFrame {
                frame_id: FrameId::parse(frame_id.as_str())?,
                frame_type: frame_type.clone(),
                payload: payload.clone(),
                occurred_at: *occurred_at,
                expected_seq: *expected_seq,
            }),
            Action::RequestCancel {
                reason,
                requested_by,
            } => run(RunCommand::RequestCancel {
                reason: reason.clone(),
                requested_by: requested_by.clone(),
            }),
            Action::FinishRun {
                outcome,
                reason_class,
                reason,
                error_code,
            } => run(RunCommand::FinishRun {
                outcome: match outcome.as_str() {
                    "succeeded" => RunOutcome::Succeeded,
                    "failed" => RunOutcome::Failed,
                    "canceled" => RunOutcome::Canceled,
                    other => bail!("outcome must be succeeded, failed or canceled, got {other:?}"),
                },
                reason_class: reason_class.clone(),
                reason: reason.clone(),
                error_code: error_code.clone(),
            }),
            Action::RegisterWorker {
                owner,
                adapter,
                workspace_ref,
                codex_home_ref,
                metadata,
                lease_ttl_ms,
            } => worker(new_register_worker(
                self.worker_id()?,
                parse_owner(owner)?,
                adapter.clone(),
                workspace_ref.clone(),
                codex_home_ref.clone(),
                metadata.clone(),
                *lease_ttl_ms,
            )),
            Action::Heartbeat { lease_ttl_ms } => worker(WorkerCommand::Heartbeat {
                lease_ttl_ms: *lease_ttl_ms,
            }),
            Action::RecordRequest {
                request_id,
                method,
                params,
            } => worker(WorkerCommand::RecordRequest {
                request_id: RequestId::parse(request_id.as_str())
                    .context("record_request.request_id")?,
                method: method.clone(),
                params: params.clone(),
            }),
            Action::ReportEvent {
                event_type,
                payload,
            } => worker(WorkerCommand::ReportEvent {
                event_type: event_type.clone(),
                payload: payload.clone(),
            }),
            Action::RequestStop { reason } => worker(WorkerCommand::RequestStop {
                reason: reason.clone(),
            }),
            Action::ExpireLease {} => worker(WorkerCommand::ExpireLease),
            Action::AppendRaw { .. } | Action::RecordReceipt {} => Ok(None),
        }
    }
}

/// `CreateRun` with the fields fixtures set (new optional fields of the command stay unset here).
pub fn new_create_run(
    run_id: RunId,
    thread_id: ThreadId,
    owner: Owner,
    metadata: Map<String, Value>,
) -> RunCommand {
    RunCommand::CreateRun {
        run_id,
        thread_id,
        owner,
        metadata,
        org_id: None,
    }
}

/// `RegisterWorker` with the fields fixtures set.
pub fn new_register_worker(
    worker_id: WorkerId,
    owner: Owner,
    adapter: String,
    workspace_ref: Option<String>,
    codex_home_ref: Option<String>,
    metadata: Map<String, Value>,
    lease_ttl_ms: u64,
) -> WorkerCommand {
    WorkerCommand::RegisterWorker {
        worker_id,
        owner,
        adapter,
        workspace_ref,
        codex_home_ref,
        metadata,
        lease_ttl_ms,
        org_id: None,
    }
}

//! A run's runtime stream, decoded from its journal events: the view that trajectory hashes,
//! REPLAY.jsonl and receipts are computed from.

use aggregates::run::{run_seq_of, RunEvent, RunStatus, RuntimeEventView};
use aggregates::Timestamp;
use serde_json::{Map, Value};

use super::ArtifactError;
use crate::journal::metadata_keys;

/// Policy bundle id of a run whose metadata names none.
pub const DEFAULT_POLICY_BUNDLE_ID: &str = "runtime.default";

/// Who the run is, from its `run.created` birth record.
#[derive(Clone, Debug, PartialEq)]
pub struct RunHeader {
    pub run_id: String,
    pub created_at: Timestamp,
    /// `metadata.policy_bundle_id`, or `runtime.default`.
    pub policy_bundle_id: String,
    pub metadata: Map<String, Value>,
}

impl RunHeader {
    pub fn new(run_id: String, created_at: Timestamp, metadata: Map<String, Value>) -> Self {
        let policy_bundle_id = metadata
            .get("policy_bundle_id")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_POLICY_BUNDLE_ID)
            .to_owned();
        Self {
            run_id,
            created_at,
            policy_bundle_id,
            metadata,
        }
    }
}

/// One event of the run's runtime stream.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStreamEvent {
    pub seq: u64,
    pub event_type: String,
    /// In the event's fixed key order (REPLAY.jsonl writes it in this order).
    pub payload: Map<String, Value>,
    /// The event's natural key (a frame's `frame_id`) or the command's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    pub recorded_at: Timestamp,
}

/// A whole run: header, stream and the status it reached.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub header: RunHeader,
    pub status: RunStatus,
    pub events: Vec<RunStreamEvent>,
}

impl RunRecord {
    /// Folds a run's journal events (journal sequence 1, 2, …), given as `(sequence, event,
    /// metadata)`.
    ///
    /// # Errors
    /// [`ArtifactError::NotFound`] without a `run.created`; [`ArtifactError::Corrupt`] when the
    /// sequence is not 1, 2, 3 … or the birth record is not first.
    pub fn fold<'a, I, M>(events: I) -> Result<Self, ArtifactError>
    where
        I: IntoIterator<Item = (u64, &'a RunEvent, M)>,
        M: MetadataLookup,
    {
        let mut builder = RunRecordBuilder::default();
        let mut stream = Vec::new();
        for (sequence, event, metadata) in events {
            if let Some(item) = builder.push(sequence, event, &metadata)? {
                stream.push(item);
            }
        }
        let (header, status) = builder.finish()?;
        Ok(RunRecord {
            header,
            status,
            events: stream,
        })
    }

    /// Number of `tool_call` (and legacy `tool`) events.
    pub fn tool_call_count(&self) -> u64 {
        self.events
            .iter()
            .filter(|e| super::receipt::is_tool_call(&e.event_type))
            .count() as u64
    }
}

/// Reads string metadata of an event (cqrs-es envelopes hold a `HashMap`, stored rows a JSON
/// object).
pub trait MetadataLookup {
    fn get_str(&self, key: &str) -> Option<&str>;
}

impl MetadataLookup for std::collections::HashMap<String, String> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl MetadataLookup for &std::collections::HashMap<String, String> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl MetadataLookup for Value {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

impl MetadataLookup for &Value {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// Folds a run's events one at a time (for streaming export and verification).
#[derive(Debug, Default)]
pub struct RunRecordBuilder {
    header: Option<RunHeader>,
    status: Option<RunStatus>,
    last_sequence: u64,
}

impl RunRecordBuilder {
    /// Takes the event at journal `sequence`; returns its stream view (`None` for `run.created`).
    ///
    /// # Errors
    /// [`ArtifactError::Corrupt`] when `sequence` does not follow the previous one or the birth
    /// record is not first.
    pub fn push<M: MetadataLookup + ?Sized>(
        &mut self,
        sequence: u64,
        event: &RunEvent,
        metadata: &M,
    ) -> Result<Option<RunStreamEvent>, ArtifactError> {
        if !self.accept(sequence, event)? {
            return Ok(None);
        }
        let view = event
            .runtime_view()
            .expect("every event but run.created has a runtime view");
        Ok(Some(stream_event(sequence, view, event.at(), metadata)))
    }

    /// [`RunRecordBuilder::push`] of an event the caller is done with: its payload is moved into
    /// the stream view rather than cloned.
    ///
    /// # Errors
    /// As [`RunRecordBuilder::push`].
    pub fn push_owned<M: MetadataLookup + ?Sized>(
        &mut self,
        sequence: u64,
        event: RunEvent,
        metadata: &M,
    ) -> Result<Option<RunStreamEvent>, ArtifactError> {
        if !self.accept(sequence, &event)? {
            return Ok(None);
        }
        let at = event.at();
        let view = event
            .into_runtime_view()
            .expect("every event but run.created has a runtime view");
        Ok(Some(stream_event(sequence, view, at, metadata)))
    }

    /// Checks the sequence and folds the header and status; `false` for `run.created` (no stream
    /// event).
    fn accept(&mut self, sequence: u64, event: &RunEvent) -> Result<bool, ArtifactError> {
        if sequence != self.last_sequence + 1 {
            return Err(ArtifactError::Corrupt(format!(
                "journal sequence {sequence} follows {}",
                self.last_sequence
            )));
        }
        self.last_sequence = sequence;
        if let RunEvent::RunCreated {
            run_id,
            metadata: run_metadata,
            created_at,
            ..
        } = event
        {
            if sequence != 1 {
                return Err(ArtifactError::Corrupt(format!(
                    "run.created at journal sequence {sequence}"
                )));
            }
            self.header = Some(RunHeader::new(
                run_id.to_string(),
                *created_at,
                run_metadata.clone(),
            ));
            self.status = event.status_after();
            return Ok(false);
        }
        if self.header.is_none() {
            return Err(ArtifactError::Corrupt(
                "the first event is not run.created".into(),
            ));
        }
        if let Some(status) = event.status_after() {
            self.status = Some(status);
        }
        Ok(true)
    }

    pub fn header(&self) -> Option<&RunHeader> {
        self.header.as_ref()
    }

    pub fn status(&self) -> Option<RunStatus> {
        self.status
    }

    /// The header and final status.
    ///
    /// # Errors
    /// [`ArtifactError::NotFound`] if no `run.created` was pushed.
    pub fn finish(self) -> Result<(RunHeader, RunStatus), ArtifactError> {
        match (self.header, self.status) {
            (Some(header), Some(status)) => Ok((header, status)),
            _ => Err(ArtifactError::NotFound),
        }
    }
}

/// The stream event of a run event other than `run.created`, at journal `sequence` (> 1).
fn stream_event<M: MetadataLookup + ?Sized>(
    sequence: u64,
    view: RuntimeEventView,
    event_at: Timestamp,
    metadata: &M,
) -> RunStreamEvent {
    let recorded_at = metadata
        .get_str(metadata_keys::RECORDED_AT)
        .and_then(|s| s.parse::<Timestamp>().ok())
        .unwrap_or(event_at);
    let idempotency_key = view.natural_key.or_else(|| {
        metadata
            .get_str(metadata_keys::IDEMPOTENCY_KEY)
            .map(str::to_owned)
    });
    RunStreamEvent {
        seq: run_seq_of(sequence).expect("sequence > 1 here"),
        event_type: view.event_type,
        payload: view.payload,
        idempotency_key,
        recorded_at,
    }
}

//! The command engine: load an aggregate, let it decide, append what it decided.
//!
//! [`Engine::execute`] stamps the command with the clock, runs `handle` against the cached (or
//! freshly loaded) aggregate and appends the resulting events with optimistic concurrency. A
//! conflicting append (another process moved the aggregate) is retried a bounded number of times
//! after reloading; then it is reported as [`CommandError::Contended`]. An `Idempotency-Key` is
//! checked before handling and recorded in the same statement as the events.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::chain::{self, EventContent};
use aggregates::{RuntimeAggregate, Stamped, Timestamp};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope};
use rand::Rng;

use crate::auth::{NonceTicket, TicketState};
use crate::cache::{AggregateCache, Loaded};
use crate::clock::Stamps;
use crate::journal::{
    metadata_keys, AnyJournal, AppendRequest, EventMetadata, IdempotencyRecord, Journal,
    JournalError, NewEvent, NewIdempotencyRecord,
};
use crate::notify::JournalNotifier;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How many times a conflicting append is retried (after reloading) before giving up.
    pub max_conflict_retries: u32,
    /// How many aggregates stay cached in memory.
    pub cache_capacity: NonZeroUsize,
    /// How many bytes the cached aggregates may weigh together
    /// (`RuntimeAggregate::approx_bytes`); least recently used ones are evicted beyond it.
    pub cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_conflict_retries: 5,
            cache_capacity: NonZeroUsize::new(10_000).expect("non-zero"),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Who issued a command and how it can be traced; copied into every event's metadata.
#[derive(Clone, Debug, Default)]
pub struct CommandContext {
    /// `user:<id>`, `guest:<scope>` or `system:<component>`.
    pub actor: String,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub idempotency: Option<IdempotencyRequest>,
    /// The request token's nonce, recorded in the command's own append (the first append made
    /// with this context records it; see `auth::NonceTicket`).
    pub nonce: Option<Arc<NonceTicket>>,
}

impl CommandContext {
    /// A context for commands the runtime issues itself (e.g. the lease sweeper).
    pub fn system(component: &str) -> Self {
        Self {
            actor: format!("system:{component}"),
            ..Self::default()
        }
    }
}

/// A client's `Idempotency-Key` for this command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRequest {
    /// Keys are unique per scope (the principal).
    pub scope: String,
    pub key: String,
    /// Hash of what the request asked for; the same key with another hash is a conflict.
    pub request_hash: String,
}

/// What a command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Events were appended.
    Appended,
    /// The command was valid and changed nothing (e.g. a re-sent frame).
    Unchanged,
    /// A retried `Idempotency-Key`: the first request's outcome, re-read from the journal.
    Replayed,
}

/// The result of a successful command.
#[derive(Debug)]
pub struct Outcome<A: RuntimeAggregate> {
    pub kind: OutcomeKind,
    /// The aggregate the command acted on (for a replay, the one the original request used).
    pub aggregate_id: String,
    /// The events the command appended (or, for a replay, had appended).
    pub events: Vec<EventEnvelope<A>>,
    /// The aggregate after the command (for a replay, right after the original command).
    pub summary: A::Summary,
    /// The aggregate's journal version after the command.
    pub version: u64,
    /// For an `Unchanged` natural-key duplicate (a frame or request re-sent with the same id):
    /// the journal sequence of the event that recorded the original, so the answer can say
    /// where it landed. `None` otherwise (the events carry it).
    pub recorded_sequence: Option<u64>,
}

impl<A: RuntimeAggregate> Outcome<A> {
    /// True unless this request appended new events.
    pub fn is_replay(&self) -> bool {
        self.kind != OutcomeKind::Appended
    }
}

/// Why a command failed. Callers branch on these.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command (a business rule).
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept winning the race for this aggregate.
    #[error("the aggregate kept changing underneath the command ({attempts} attempts)")]
    Contended { attempts: u32 },
    /// The idempotency key was first used for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// The request's token nonce was recorded by another request first: nothing was written.
    #[error("the request's token nonce was already used")]
    NonceReplayed,
    /// The journal could not be reached; the command may or may not have been applied.
    #[error("journal unavailable")]
    Unavailable(#[source] JournalError),
    /// Anything else (corrupt data, a bug). Logged where handled; clients see an opaque error.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl<E: std::error::Error> CommandError<E> {
    fn from_journal(error: JournalError) -> Self {
        if error.is_unavailable() {
            CommandError::Unavailable(error)
        } else {
            CommandError::Internal(anyhow::Error::new(error))
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CommandError::Rejected(_) => "rejected",
            CommandError::Contended { .. } => "contended",
            CommandError::IdempotencyKeyReused => "idempotency_conflict",
            CommandError::NonceReplayed => "nonce_replayed",
            CommandError::Unavailable(_) => "unavailable",
            CommandError::Internal(_) => "error",
        }
    }
}

/// The command engine. One per process; cheap to share behind an `Arc`.
pub struct Engine {
    journal: AnyJournal,
    stamps: Stamps,
    cache: AggregateCache,
    notifier: Arc<JournalNotifier>,
    config: EngineConfig,
}

impl Engine {
    pub fn new(
        journal: AnyJournal,
        stamps: Stamps,
        notifier: Arc<JournalNotifier>,
        config: EngineConfig,
    ) -> Self {
        Self {
            journal,
            stamps,
            cache: AggregateCache::new(config.cache_capacity, config.cache_bytes),
            notifier,
            config,
        }
    }

    pub fn journal(&self) -> &AnyJournal {
        &self.journal
    }

    pub fn notifier(&self) -> &Arc<JournalNotifier> {
        &self.notifier
    }

    /// The engine's clock.
    pub fn now(&self) -> Timestamp {
        self.stamps.clock.now()
    }

    /// A fresh id from the engine's id source.
    pub fn next_id(&self, prefix: &str) -> String {
        self.stamps.ids.next_id(prefix)
    }

    /// Executes `action` against aggregate `aggregate_id`.
    ///
    /// # Errors
    /// See [`CommandError`]. Nothing is written unless `Ok(Outcome { kind: Appended, .. })`.
    ///
    /// # Cancel safety
    /// Not cancel safe once the append is in flight (the outcome is then unknown, as after a
    /// crash); callers retry with the same idempotency key or natural key.
    #[tracing::instrument(name = "runtime.persist", skip_all, fields(aggregate = A::TYPE, aggregate_id = %aggregate_id))]
    pub async fn execute<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        action: A::Action,
        context: &CommandContext,
    ) -> Result<Outcome<A>, CommandError<A::Error>> {
        let started = Instant::now();
        let result = self.execute_inner::<A>(aggregate_id, action, context).await;
        let outcome = match &result {
            Ok(o) => match o.kind {
                OutcomeKind::Appended => "appended",
                OutcomeKind::Unchanged => "unchanged",
                OutcomeKind::Replayed => "replayed",
            },
            Err(e) => e.label(),
        };
        metrics::counter!("runtime_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("runtime_command_duration_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_inner<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        action: A::Action,
        context: &CommandContext,
    ) -> Result<Outcome<A>, CommandError<A::Error>> {
        if let Some(idem) = &context.idempotency {
            let existing = self
                .journal
                .find_idempotency(&idem.scope, &idem.key)
                .await
                .map_err(CommandError::from_journal)?;
            if let Some(record) = existing {
                return self.replay::<A>(record, idem).await;
            }
        }
        let at = self.now();
        let command = Stamped::new(at, action);
        let metadata = event_metadata(at, context);
        let idempotency = context
            .idempotency
            .as_ref()
            .map(|idem| NewIdempotencyRecord {
                scope: idem.scope.clone(),
                key: idem.key.clone(),
                request_hash: idem.request_hash.clone(),
                created_at: at,
            });
        let slot = self.cache.slot::<A>(A::TYPE, aggregate_id);
        // One command per aggregate at a time in this process; held across the append so the
        // cached state and the journal move together.
        let mut guard = slot.lock().await;
        let mut attempts = 0;
        // Whether the state in the slot was read from the journal during this call. A cached
        // state may be stale (another process appended): appends catch that through the
        // optimistic check, but a rejection or a no-op decided on stale state is re-checked.
        let mut fresh = false;
        loop {
            attempts += 1;
            if guard.is_none() {
                self.catch_up::<A>(aggregate_id, &mut guard).await?;
                fresh = true;
            }
            let loaded = guard.as_mut().expect("loaded by catch_up");
            let expected = loaded.version;
            let sink = EventSink::<A>::default();
            // `handle` applies each event it writes to the aggregate; on any failure after this
            // point the cached state no longer matches the journal and is dropped.
            let handled = loaded.aggregate.handle(command.clone(), &(), &sink).await;
            let events = sink.collect().await;
            if let Err(rejection) = handled {
                if !events.is_empty() {
                    *guard = None;
                }
                if !fresh {
                    self.catch_up::<A>(aggregate_id, &mut guard).await?;
                    fresh = true;
                    continue;
                }
                return Err(CommandError::Rejected(rejection));
            }
            if events.is_empty() {
                if !fresh {
                    self.catch_up::<A>(aggregate_id, &mut guard).await?;
                    fresh = true;
                    continue;
                }
                return Ok(Outcome {
                    kind: OutcomeKind::Unchanged,
                    aggregate_id: aggregate_id.to_owned(),
                    events: Vec::new(),
                    summary: loaded.aggregate.summary(),
                    version: expected,
                    recorded_sequence: loaded.aggregate.recorded_sequence(&command.command),
                });
            }
            let chained = to_new_events::<A>(
                aggregate_id,
                expected,
                loaded.chain_head.as_deref(),
                &events,
                &metadata,
            );
            let (new_events, chain_head) = match chained {
                Ok(e) => e,
                Err(error) => {
                    *guard = None;
                    return Err(CommandError::Internal(error));
                }
            };
            let ticket = context.nonce.as_deref();
            let nonce = ticket.and_then(NonceTicket::pending);
            let appended = self
                .journal
                .append(AppendRequest {
                    aggregate_type: A::TYPE,
                    aggregate_id,
                    expected_sequence: expected,
                    events: &new_events,
                    idempotency: idempotency.as_ref(),
                    nonce,
                })
                .await;
            if let (Some(ticket), Some(_)) = (ticket, nonce) {
                match &appended {
                    Ok(_) => ticket.mark(TicketState::Recorded),
                    // Rejected statements wrote nothing: the nonce is still pending.
                    Err(
                        JournalError::Conflict { .. }
                        | JournalError::IdempotencyKeyTaken
                        | JournalError::NonceTaken
                        | JournalError::InvalidAppend(_),
                    ) => {}
                    Err(_) => ticket.mark(TicketState::Unknown),
                }
            }
            match appended {
                Ok(appended) => {
                    loaded.version = appended.last_sequence;
                    loaded.chain_head = Some(chain_head);
                    let summary = loaded.aggregate.summary();
                    let bytes = loaded.aggregate.approx_bytes();
                    drop(guard);
                    self.cache.weigh(A::TYPE, aggregate_id, bytes);
                    self.notifier
                        .publish(A::TYPE, aggregate_id, appended.last_sequence);
                    metrics::counter!("runtime_events_appended_total", "aggregate" => A::TYPE)
                        .increment(events.len() as u64);
                    let envelope_metadata: HashMap<String, String> =
                        metadata.clone().into_iter().collect();
                    let events = events
                        .into_iter()
                        .enumerate()
                        .map(|(i, payload)| EventEnvelope {
                            aggregate_id: aggregate_id.to_owned(),
                            sequence: (expected + 1 + i as u64) as usize,
                            payload,
                            metadata: envelope_metadata.clone(),
                        })
                        .collect();
                    return Ok(Outcome {
                        kind: OutcomeKind::Appended,
                        aggregate_id: aggregate_id.to_owned(),
                        events,
                        summary,
                        version: appended.last_sequence,
                        recorded_sequence: None,
                    });
                }
                Err(JournalError::Conflict { .. }) => {
                    *guard = None;
                    metrics::counter!("runtime_command_conflicts_total", "aggregate" => A::TYPE)
                        .increment(1);
                    if attempts > self.config.max_conflict_retries {
                        return Err(CommandError::Contended { attempts });
                    }
                    let jitter = rand::thread_rng().gen_range(0..=2 * u64::from(attempts));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(JournalError::NonceTaken) => {
                    // Another request with the same token won and nothing was written; the
                    // handled events were applied to the cached state, so it goes.
                    *guard = None;
                    return Err(CommandError::NonceReplayed);
                }
                Err(JournalError::IdempotencyKeyTaken) => {
                    *guard = None;
                    drop(guard);
                    let idem = context
                        .idempotency
                        .as_ref()
                        .expect("only appends with a key can collide on it");
                    let record = self
                        .journal
                        .find_idempotency(&idem.scope, &idem.key)
                        .await
                        .map_err(CommandError::from_journal)?
                        .ok_or_else(|| {
                            CommandError::Internal(anyhow::anyhow!(
                                "idempotency key collided but is not stored"
                            ))
                        })?;
                    return self.replay::<A>(record, idem).await;
                }
                Err(error) => {
                    // The outcome is unknown (the commit may have happened): forget the state.
                    *guard = None;
                    return Err(CommandError::from_journal(error));
                }
            }
        }
    }

    /// Folds the journal's newer events into the slot (or loads from scratch if it is empty).
    async fn catch_up<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        slot: &mut Option<Loaded<A>>,
    ) -> Result<(), CommandError<A::Error>> {
        let Loaded {
            mut aggregate,
            version,
            mut chain_head,
        } = slot.take().unwrap_or(Loaded {
            aggregate: A::default(),
            version: 0,
            chain_head: None,
        });
        let stored = self
            .journal
            .load::<A>(aggregate_id, version)
            .await
            .map_err(CommandError::from_journal)?;
        let mut version = version;
        for serialized in stored {
            chain_head = Some(stored_chain_hash(&serialized, chain_head.as_deref()));
            let envelope = decode::<A>(serialized, version + 1).map_err(CommandError::Internal)?;
            aggregate.apply(envelope.payload);
            version += 1;
        }
        *slot = Some(Loaded {
            aggregate,
            version,
            chain_head,
        });
        Ok(())
    }

    async fn replay<A: RuntimeAggregate>(
        &self,
        record: IdempotencyRecord,
        idem: &IdempotencyRequest,
    ) -> Result<Outcome<A>, CommandError<A::Error>> {
        if record.request_hash != idem.request_hash || record.aggregate_type != A::TYPE {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let stored = self
            .journal
            .load::<A>(&record.aggregate_id, 0)
            .await
            .map_err(CommandError::from_journal)?;
        let mut aggregate = A::default();
        let mut events = Vec::new();
        let mut version = 0;
        for serialized in stored {
            if serialized.sequence as u64 > record.last_sequence {
                break;
            }
            let envelope = decode::<A>(serialized, version + 1).map_err(CommandError::Internal)?;
            version += 1;
            aggregate.apply(envelope.payload.clone());
            if version >= record.first_sequence {
                events.push(envelope);
            }
        }
        if version != record.last_sequence {
            return Err(CommandError::Internal(anyhow::anyhow!(
                "idempotency record points past the end of {}/{}",
                A::TYPE,
                record.aggregate_id
            )));
        }
        Ok(Outcome {
            kind: OutcomeKind::Replayed,
            aggregate_id: record.aggregate_id,
            events,
            summary: aggregate.summary(),
            version,
            recorded_sequence: None,
        })
    }

    /// What the cached aggregates weigh together (bounded by `EngineConfig::cache_bytes`).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The aggregate's current summary and version, read through to the journal (so it reflects
    /// appends by other processes).
    ///
    /// # Errors
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`].
    pub async fn load<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<(A::Summary, u64), CommandError<A::Error>> {
        let slot = self.cache.slot::<A>(A::TYPE, aggregate_id);
        let mut guard = slot.lock().await;
        self.catch_up::<A>(aggregate_id, &mut guard).await?;
        let loaded = guard.as_ref().expect("loaded by catch_up");
        let loaded_bytes = loaded.aggregate.approx_bytes();
        let answer = (loaded.aggregate.summary(), loaded.version);
        drop(guard);
        self.cache.weigh(A::TYPE, aggregate_id, loaded_bytes);
        Ok(answer)
    }

    /// The aggregate's summary as this process's cache holds it, without reading the journal,
    /// when it is cached and `settled` accepts it; otherwise as [`Engine::load`]. A cached
    /// summary may lag other processes' appends: `settled` must accept only summaries whose facts
    /// the caller reads can no longer change (e.g. an existing run's owner, thread and tenant).
    ///
    /// # Errors
    /// As [`Engine::load`].
    pub async fn load_settled<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        settled: impl FnOnce(&A::Summary) -> bool,
    ) -> Result<A::Summary, CommandError<A::Error>> {
        let cached = {
            let slot = self.cache.slot::<A>(A::TYPE, aggregate_id);
            let guard = slot.lock().await;
            guard.as_ref().map(|loaded| loaded.aggregate.summary())
        };
        match cached {
            Some(summary) if settled(&summary) => Ok(summary),
            _ => Ok(self.load::<A>(aggregate_id).await?.0),
        }
    }

    /// The aggregate's events with journal sequence greater than `after_sequence`, decoded.
    ///
    /// # Errors
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`].
    pub async fn events_after<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
        let stored = self
            .journal
            .load::<A>(aggregate_id, after_sequence)
            .await
            .map_err(CommandError::from_journal)?;
        decode_after::<A>(after_sequence, stored.into_iter())
    }

    /// At most `limit` of one aggregate's events with `sequence > after_sequence`, decoded, in
    /// sequence order: what a reader that streams an aggregate (SSE) reads per step, so a long
    /// history is never held in memory at once.
    ///
    /// # Errors
    /// As [`Self::events_after`].
    pub async fn events_page<A: RuntimeAggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
        let stored = self
            .journal
            .load_stored(A::TYPE, aggregate_id, after_sequence, limit)
            .await
            .map_err(CommandError::from_journal)?;
        decode_after::<A>(after_sequence, stored.into_iter().map(|s| s.event))
    }
}

/// Decodes one aggregate's events that follow `after_sequence`, checking that their sequences
/// continue it without a gap.
fn decode_after<A: RuntimeAggregate>(
    after_sequence: u64,
    stored: impl ExactSizeIterator<Item = SerializedEvent>,
) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
    let mut events = Vec::with_capacity(stored.len());
    for (expected, serialized) in (after_sequence + 1..).zip(stored) {
        events.push(decode::<A>(serialized, expected).map_err(CommandError::Internal)?);
    }
    Ok(events)
}

fn event_metadata(at: Timestamp, context: &CommandContext) -> EventMetadata {
    let mut metadata = EventMetadata::new();
    metadata.insert(metadata_keys::RECORDED_AT.into(), at.to_rfc3339());
    metadata.insert(metadata_keys::ACTOR.into(), context.actor.clone());
    if let Some(request_id) = &context.request_id {
        metadata.insert(metadata_keys::REQUEST_ID.into(), request_id.clone());
    }
    if let Some(trace_id) = &context.trace_id {
        metadata.insert(metadata_keys::TRACE_ID.into(), trace_id.clone());
    }
    if let Some(idem) = &context.idempotency {
        metadata.insert(metadata_keys::IDEMPOTENCY_KEY.into(), idem.key.clone());
    }
    metadata
}

/// Serialises the events of one append and links each into the aggregate's hash chain: its
/// `content_hash` and `chain_hash` go into its metadata (`aggregates::chain`). Returns the events
/// and the new chain head.
fn to_new_events<A: Aggregate>(
    aggregate_id: &str,
    expected_sequence: u64,
    chain_head: Option<&str>,
    events: &[A::Event],
    metadata: &EventMetadata,
) -> anyhow::Result<(Vec<NewEvent>, String)> {
    let metadata_value = serde_json::to_value(metadata)?;
    let mut head = chain_head.map(str::to_owned);
    let mut out = Vec::with_capacity(events.len());
    for (offset, event) in events.iter().enumerate() {
        let event_type = event.event_type();
        let event_version = event.event_version();
        let payload = serde_json::to_value(event)?;
        let (content_hash, chain) = chain::link(
            head.as_deref(),
            &EventContent {
                aggregate_type: A::TYPE,
                aggregate_id,
                sequence: expected_sequence + 1 + offset as u64,
                event_type: &event_type,
                event_version: &event_version,
                payload: &payload,
                metadata: &metadata_value,
            },
        );
        let mut metadata = metadata.clone();
        metadata.insert(chain::CONTENT_HASH_KEY.into(), content_hash);
        metadata.insert(chain::CHAIN_HASH_KEY.into(), chain.clone());
        head = Some(chain);
        out.push(NewEvent {
            event_type,
            event_version,
            payload,
            metadata,
        });
    }
    let head = head.ok_or_else(|| anyhow::anyhow!("an append needs at least one event"))?;
    Ok((out, head))
}

/// The chain hash of a stored event: the one in its metadata, or (for rows written before the
/// chain existed, or by another writer such as the stock postgres-es repository) the one computed
/// from its content and `prev_chain_hash`.
pub fn stored_chain_hash(event: &SerializedEvent, prev_chain_hash: Option<&str>) -> String {
    if let Some(stored) = event
        .metadata
        .get(chain::CHAIN_HASH_KEY)
        .and_then(|v| v.as_str())
    {
        return stored.to_owned();
    }
    chain::link(prev_chain_hash, &stored_content(event)).1
}

/// The chain content of a stored event.
pub fn stored_content(event: &SerializedEvent) -> EventContent<'_> {
    EventContent {
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence as u64,
        event_type: &event.event_type,
        event_version: &event.event_version,
        payload: &event.payload,
        metadata: &event.metadata,
    }
}

/// Upcasts and deserialises one stored event, checking it sits at `expected_sequence`.
pub fn decode<A: RuntimeAggregate>(
    serialized: SerializedEvent,
    expected_sequence: u64,
) -> anyhow::Result<EventEnvelope<A>> {
    if serialized.sequence as u64 != expected_sequence {
        anyhow::bail!(
            "{}/{} has sequence {} where {} was expected",
            serialized.aggregate_type,
            serialized.aggregate_id,
            serialized.sequence,
            expected_sequence
        );
    }
    let upcast = A::upcast(serialized);
    let context = format!(
        "decode {} v{} at {}/{}#{}",
        upcast.event_type,
        upcast.event_version,
        upcast.aggregate_type,
        upcast.aggregate_id,
        upcast.sequence
    );
    EventEnvelope::<A>::try_from(upcast).map_err(|e| anyhow::anyhow!("{context}: {e}"))
}

//! The write path: [`Engine::execute`] stamps a command, lets the aggregate decide, and appends
//! what it decided with optimistic concurrency, an idempotency record and the request's nonce.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aggregates::chain::{self, EventContent};
use aggregates::{RuntimeAggregate, Stamped, Timestamp};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope};
use rand::Rng;

use super::{
    decode, CommandContext, CommandError, Engine, IdempotencyRequest, Outcome, OutcomeKind,
};
use crate::auth::{NonceTicket, TicketState};
use crate::journal::{
    metadata_keys, AppendRequest, EventMetadata, IdempotencyRecord, Journal, JournalError,
    NewEvent, NewIdempotencyRecord,
};

impl Engine {
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

//! The read models, type-erased for the composition root and the CLI: [`DynProjector`] runs,
//! rebuilds and catches up a read model, repairs one entity's documents, and compares the stored
//! documents with a fold of the journal.

use std::marker::PhantomData;
use std::sync::Arc;

use engine::journal::{GlobalCursor, StoredEvent};
use engine::{AnyJournal, Journal};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::fold::serialize_doc;
use super::{now_ms, spec_of, ProjectorContext, Runner, RunnerError};
use crate::model::Projection;
use crate::store::{DocWrite, ProjectorSpec, Repaired, StoreError, Swapped, SyncStore};

/// A difference between the stored documents and a fold of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    pub doc_key: String,
    pub problem: String,
}

/// One read model, type-erased, for the composition root and the CLI.
pub trait DynProjector: Send + Sync {
    fn spec(&self) -> ProjectorSpec;
    /// The aggregate types whose events it reads.
    fn aggregate_types(&self) -> &'static [&'static str];
    /// [`Runner::run`].
    fn run(
        &self,
        ctx: Arc<ProjectorContext>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
    /// [`Runner::run_until_rebuilt`].
    fn run_until_rebuilt(
        &self,
        ctx: Arc<ProjectorContext>,
        requested_at_ms: i64,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<Option<Swapped>, RunnerError>>;
    /// [`Runner::catch_up`].
    fn catch_up(&self, ctx: Arc<ProjectorContext>) -> BoxFuture<'static, Result<u64, RunnerError>>;
    /// Re-folds one entity's documents from the journal and rewrites those that differ
    /// (`reproject --run-id/--worker-id`).
    fn repair(
        &self,
        ctx: Arc<ProjectorContext>,
        aggregate_id: String,
    ) -> BoxFuture<'static, Result<Vec<(String, Repaired)>, RunnerError>>;
    /// Compares the stored documents with a fold of `events` (the whole journal in commit
    /// order).
    fn compare<'a>(
        &'a self,
        store: &'a SyncStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<Vec<Drift>, RunnerError>>;
}

/// [`DynProjector`] for projection `P`.
pub struct Typed<P>(PhantomData<P>);

impl<P> Default for Typed<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Folds one entity's events (up to `cursor`) into document writes.
async fn fold_entity<P: Projection>(
    journal: &AnyJournal,
    aggregate_id: &str,
    cursor: GlobalCursor,
) -> Result<Vec<DocWrite>, RunnerError> {
    let mut events = Vec::new();
    for aggregate_type in P::AGGREGATE_TYPES {
        events.extend(
            journal
                .load_stored(aggregate_type, aggregate_id, 0, usize::MAX)
                .await?
                .into_iter()
                .filter(|e| e.cursor <= cursor),
        );
    }
    events.sort_by_key(|e| e.cursor);
    let docs = crate::model::fold::<P>(&events)?;
    let mut writes = Vec::with_capacity(docs.len());
    for (key, (doc, version)) in docs {
        let (payload, payload_hash) = serialize_doc::<P>(&doc)?;
        writes.push(DocWrite {
            doc_key: key,
            doc_version: version,
            payload,
            payload_hash,
            owner: P::owner(&doc),
            projected_at_ms: P::projected_at(&doc).unix_micros() / 1000,
            last_row: None,
        });
    }
    Ok(writes)
}

impl<P: Projection> DynProjector for Typed<P> {
    fn spec(&self) -> ProjectorSpec {
        spec_of::<P>()
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        P::AGGREGATE_TYPES
    }

    fn run(
        &self,
        ctx: Arc<ProjectorContext>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(Runner::<P>::new(ctx).run(shutdown))
    }

    fn run_until_rebuilt(
        &self,
        ctx: Arc<ProjectorContext>,
        requested_at_ms: i64,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<Option<Swapped>, RunnerError>> {
        Box::pin(Runner::<P>::new(ctx).run_until_rebuilt(requested_at_ms, shutdown))
    }

    fn catch_up(&self, ctx: Arc<ProjectorContext>) -> BoxFuture<'static, Result<u64, RunnerError>> {
        Box::pin(Runner::<P>::new(ctx).catch_up())
    }

    fn repair(
        &self,
        ctx: Arc<ProjectorContext>,
        aggregate_id: String,
    ) -> BoxFuture<'static, Result<Vec<(String, Repaired)>, RunnerError>> {
        Box::pin(async move {
            let spec = spec_of::<P>();
            let journal = ctx.journal.clone();
            let computed = std::sync::Mutex::new(None);
            let result = ctx
                .store
                .repair_docs(&spec, now_ms(), P::DOCS_ARE_EVENTS, |cursor| {
                    let computed = &computed;
                    let journal = journal.clone();
                    let aggregate_id = aggregate_id.clone();
                    async move {
                        match fold_entity::<P>(&journal, &aggregate_id, cursor).await {
                            Ok(writes) => Ok(writes),
                            Err(error) => {
                                let message = error.to_string();
                                *computed.lock().expect("not poisoned") = Some(error);
                                Err(StoreError::Corrupt(message))
                            }
                        }
                    }
                })
                .await;
            match result {
                Ok(outcomes) => {
                    if outcomes
                        .iter()
                        .any(|(_, r)| matches!(r, Repaired::Written { .. }))
                    {
                        ctx.notifier.committed(spec.topic);
                    }
                    Ok(outcomes)
                }
                Err(store_error) => match computed.lock().expect("not poisoned").take() {
                    Some(error) => Err(error),
                    None => Err(RunnerError::Store(store_error)),
                },
            }
        })
    }

    fn compare<'a>(
        &'a self,
        store: &'a SyncStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<Vec<Drift>, RunnerError>> {
        Box::pin(async move {
            let spec = spec_of::<P>();
            let folded = crate::model::fold::<P>(events)?;
            let stored = store.all_docs(&spec).await?;
            let mut drift = Vec::new();
            let problem = |key: &str, text: String| Drift {
                topic: spec.topic.to_owned(),
                doc_key: key.to_owned(),
                problem: text,
            };
            let mut seen = std::collections::BTreeSet::new();
            for row in &stored {
                seen.insert(row.doc_key.clone());
                let Some((doc, version)) = folded.get(&row.doc_key) else {
                    drift.push(problem(
                        &row.doc_key,
                        "stored, but the journal folds to no such document".into(),
                    ));
                    continue;
                };
                let (_, hash) = serialize_doc::<P>(doc)?;
                if hash != row.payload_hash {
                    drift.push(problem(
                        &row.doc_key,
                        format!(
                            "payload differs: stored {} vs journal {hash}",
                            row.payload_hash
                        ),
                    ));
                } else if *version != row.doc_version {
                    drift.push(problem(
                        &row.doc_key,
                        format!(
                            "doc_version differs: stored {} vs journal {version}",
                            row.doc_version
                        ),
                    ));
                }
            }
            if !P::DOCS_ARE_EVENTS {
                for key in folded.keys() {
                    if !seen.contains(key) {
                        drift.push(problem(key, "missing from the read model".into()));
                    }
                }
            }
            Ok(drift)
        })
    }
}

/// The runtime's read models, in a fixed order.
pub fn all_projectors() -> Vec<Arc<dyn DynProjector>> {
    vec![
        Arc::new(Typed::<crate::run_summary::RunSummaries>::default()),
        Arc::new(Typed::<crate::worker_summary::WorkerSummaries>::default()),
        Arc::new(Typed::<crate::worker_events::WorkerEvents>::default()),
        Arc::new(Typed::<crate::payments::Payments>::default()),
        Arc::new(Typed::<crate::run_events::RunEvents>::default()),
        Arc::new(Typed::<crate::run_metadata::RunMetadata>::default()),
    ]
}

/// Runs [`Runner::catch_up`] for every projector, one after the other; returns the events read.
///
/// # Errors
/// The first failure.
pub async fn catch_up_all(ctx: &Arc<ProjectorContext>) -> Result<u64, RunnerError> {
    let mut read = 0;
    for projector in all_projectors() {
        read += projector.catch_up(ctx.clone()).await?;
    }
    Ok(read)
}

/// The specs of [`all_projectors`].
pub fn all_specs() -> Vec<ProjectorSpec> {
    all_projectors().iter().map(|p| p.spec()).collect()
}

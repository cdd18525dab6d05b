//! Folding a batch of journal events through the projection: the documents it changes (read
//! from the store, or from the rebuild's shadow cache) and, when live, one stream row per change.

use std::collections::HashMap;
use std::sync::Arc;

use aggregates::canonical::hash_canonical;
use cqrs_es::persist::SerializedEvent;
use engine::journal::StoredEvent;
use engine::Journal;

use super::{Runner, RunnerError};
use crate::model::{recorded_at, ProjectedEvent, Projection};
use crate::store::{DocRow, DocWrite, NewRow, StoreError, Target};

/// A batch folded into what to commit.
pub(super) struct Folded {
    pub(super) rows: Vec<NewRow>,
    pub(super) docs: Vec<DocWrite>,
    /// Recorded times (Unix microseconds) of the events that changed a document, for the
    /// pickup and lag histograms.
    pub(super) recorded_us: Vec<i64>,
}

pub(super) fn serialize_doc<P: Projection>(doc: &P::Doc) -> Result<(String, String), RunnerError> {
    let value = serde_json::to_value(doc).map_err(|e| RunnerError::Serialize(e.to_string()))?;
    Ok((value.to_string(), hash_canonical(&value)))
}

fn parse_doc<P: Projection>(row: &DocRow) -> Result<P::Doc, RunnerError> {
    serde_json::from_str(&row.payload).map_err(|e| {
        RunnerError::Store(StoreError::Corrupt(format!(
            "document {} does not decode: {e}",
            row.doc_key
        )))
    })
}

impl<P: Projection> Runner<P> {
    async fn birth(
        &mut self,
        event: &SerializedEvent,
    ) -> Result<Option<Arc<SerializedEvent>>, RunnerError> {
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if let Some(found) = self.births.get(&key) {
            return Ok(Some(found.clone()));
        }
        let loaded = self
            .ctx
            .journal
            .load_stored(&event.aggregate_type, &event.aggregate_id, 0, 1)
            .await?;
        let Some(first) = loaded.into_iter().next() else {
            return Ok(None);
        };
        let first = Arc::new(P::upcast(&first.event).unwrap_or(first.event));
        self.births.put(key, first.clone());
        Ok(Some(first))
    }

    /// Folds `events` (in commit order) into rows (live only) and final documents.
    pub(super) async fn fold_batch(
        &mut self,
        target: Target,
        events: &[StoredEvent],
    ) -> Result<Folded, RunnerError> {
        let mut relevant = Vec::new();
        for stored in events {
            if !P::AGGREGATE_TYPES.contains(&stored.event.aggregate_type.as_str()) {
                continue;
            }
            let event = match P::upcast(&stored.event) {
                Some(upcast) => std::borrow::Cow::Owned(upcast),
                None => std::borrow::Cow::Borrowed(&stored.event),
            };
            if event.sequence == 1 && P::NEEDS_BIRTH {
                self.births.put(
                    (event.aggregate_type.clone(), event.aggregate_id.clone()),
                    Arc::new(event.clone().into_owned()),
                );
            }
            if let Some(key) = P::doc_key(&event) {
                relevant.push((stored, event, key));
            }
        }
        // A rebuild folds into its cache of the shadow (taken out here, put back only when the
        // whole batch folded); a live batch starts from the stored documents.
        let mut working: HashMap<String, (P::Doc, u64, Option<usize>)> = match target {
            Target::Rebuild => std::mem::take(&mut self.shadow),
            Target::Live => HashMap::new(),
        };
        if !P::DOCS_ARE_EVENTS && !relevant.is_empty() {
            let mut keys: Vec<String> = relevant
                .iter()
                .map(|(_, _, k)| k)
                .filter(|k| !working.contains_key(*k))
                .cloned()
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for row in self.ctx.store.load_docs(&self.spec, target, &keys).await? {
                let doc = parse_doc::<P>(&row)?;
                working.insert(row.doc_key.clone(), (doc, row.doc_version, None));
            }
        }
        let mut rows = Vec::new();
        let mut recorded_us = Vec::new();
        // Documents in the order they first changed in this batch.
        let mut order: Vec<String> = Vec::new();
        let mut touched = std::collections::HashSet::new();
        for (stored, event, key) in &relevant {
            let birth = if P::NEEDS_BIRTH {
                self.birth(event).await?
            } else {
                None
            };
            let at = recorded_at(stored);
            let projected = ProjectedEvent {
                stored,
                event,
                recorded_at: at,
                birth: birth.as_deref(),
            };
            let prior = working.remove(key);
            let (prior_version, prior_row) = prior.as_ref().map_or((0, None), |(_, v, r)| (*v, *r));
            let mut slot = prior.map(|(d, _, _)| d);
            let changed = P::apply(&mut slot, &projected)?;
            let Some(doc) = slot else {
                continue;
            };
            if !changed {
                working.insert(key.clone(), (doc, prior_version, prior_row));
                continue;
            }
            let version = prior_version + 1;
            recorded_us.push(at.unix_micros());
            let last_row = if target == Target::Live {
                let (payload, payload_hash) = serialize_doc::<P>(&doc)?;
                rows.push(NewRow {
                    doc_key: key.clone(),
                    doc_version: version,
                    payload,
                    payload_hash,
                    owner: P::owner(&doc),
                    projected_at_ms: P::projected_at(&doc).unix_micros() / 1000,
                });
                Some(rows.len() - 1)
            } else {
                None
            };
            if touched.insert(key.clone()) {
                order.push(key.clone());
            }
            working.insert(key.clone(), (doc, version, last_row));
        }
        let mut docs = Vec::with_capacity(order.len());
        for key in order {
            let Some((doc, version, last_row)) = working.get(&key) else {
                continue;
            };
            let (payload, payload_hash) = match last_row {
                Some(i) => (rows[*i].payload.clone(), rows[*i].payload_hash.clone()),
                None => serialize_doc::<P>(doc)?,
            };
            docs.push(DocWrite {
                doc_key: key,
                doc_version: *version,
                payload,
                payload_hash,
                owner: P::owner(doc),
                projected_at_ms: P::projected_at(doc).unix_micros() / 1000,
                last_row: *last_row,
            });
        }
        if target == Target::Rebuild && !P::DOCS_ARE_EVENTS {
            self.shadow = working;
        }
        Ok(Folded {
            rows,
            docs,
            recorded_us,
        })
    }
}

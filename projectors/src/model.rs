//! What a read model is: the [`Projection`] trait every read model implements, and the small
//! types shared by all of them (owners, the `runtime_source` block, projected events).
//!
//! A projection is pure: given the document as it stood (or none) and one journal event, it
//! returns the document after the event, or `None` when the event does not change it. The
//! [runner](crate::runner) does all I/O: it reads the journal in commit order, loads the documents
//! a batch touches, folds the batch through [`Projection::apply`] and writes documents,
//! watermarks, stream rows and the checkpoint in one transaction. Because `apply` never reads the
//! wall clock (the projection time is the event's recorded time), the same journal always gives
//! the same bytes.

use aggregates::Timestamp;
use cqrs_es::persist::SerializedEvent;
use engine::journal::StoredEvent;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Who may read a document: the owner of the run, worker or payment it describes, bounded by the
/// tenant. A document with neither a user nor a guest scope is delivered to nobody.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocOwner {
    pub user_id: Option<String>,
    pub guest_scope: Option<String>,
    pub org_id: Option<String>,
}

impl DocOwner {
    /// A user's documents (no tenant).
    pub fn user(user_id: &str) -> Self {
        Self {
            user_id: Some(user_id.to_owned()),
            ..Self::default()
        }
    }

    /// The owner recorded with an aggregate's birth record.
    pub fn of(owner: Option<&aggregates::ids::Owner>, org_id: Option<&str>) -> Self {
        Self {
            user_id: owner.and_then(|o| o.user_id()).map(|u| u.to_string()),
            guest_scope: owner.and_then(|o| o.guest_scope()).map(|g| g.to_string()),
            org_id: org_id.map(str::to_owned),
        }
    }
}

/// Which documents a read returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnerFilter {
    /// Every document (operators, the gateway's shared tailers).
    Any,
    /// Documents the principal owns: (same user, or same guest scope) and the same tenant (both
    /// org-less, or the same org).
    Principal {
        user_id: Option<String>,
        guest_scope: Option<String>,
        org_id: Option<String>,
    },
}

impl OwnerFilter {
    /// Whether `owner`'s documents pass this filter (the same rule the SQL reads apply).
    pub fn matches(&self, owner: &DocOwner) -> bool {
        match self {
            OwnerFilter::Any => true,
            OwnerFilter::Principal {
                user_id,
                guest_scope,
                org_id,
            } => {
                let user = user_id.is_some() && *user_id == owner.user_id;
                let guest = guest_scope.is_some() && *guest_scope == owner.guest_scope;
                // Tenancy fails closed: an org's documents need that org's claim, and an org
                // claim reaches only that org's documents (docs/security.md).
                let org = *org_id == owner.org_id;
                (user || guest) && org
            }
        }
    }
}

/// Where a document version came from, carried in every payload as `runtime_source`: the
/// aggregate and the journal sequence range (one event per change, so `seq == seq_end`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSource {
    /// Always `"runtime"`.
    pub source: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub seq: u64,
    pub seq_end: u64,
}

impl RuntimeSource {
    pub fn of(event: &SerializedEvent) -> Self {
        Self {
            source: "runtime".to_owned(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            seq: event.sequence as u64,
            seq_end: event.sequence as u64,
        }
    }
}

/// One journal event as a projection sees it: upcast to the current shape, with its recorded
/// time (the projection clock) and, for projections that ask, the aggregate's birth record.
#[derive(Clone, Copy, Debug)]
pub struct ProjectedEvent<'a> {
    pub stored: &'a StoredEvent,
    /// The event after the aggregate's upcaster ran.
    pub event: &'a SerializedEvent,
    pub recorded_at: Timestamp,
    /// Sequence 1 of the same aggregate, when [`Projection::NEEDS_BIRTH`].
    pub birth: Option<&'a SerializedEvent>,
}

impl ProjectedEvent<'_> {
    /// Decodes the (upcast) payload as `E`.
    ///
    /// # Errors
    /// [`ProjectionError::Decode`] naming the event.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, ProjectionError> {
        decode_event(self.event)
    }

    pub fn source(&self) -> RuntimeSource {
        RuntimeSource::of(self.event)
    }
}

/// Decodes a serialized event's payload as `E`.
///
/// # Errors
/// [`ProjectionError::Decode`] naming the event.
pub fn decode_event<E: DeserializeOwned>(event: &SerializedEvent) -> Result<E, ProjectionError> {
    E::deserialize(&event.payload).map_err(|e| ProjectionError::Decode {
        at: format!(
            "{}/{}#{} ({} v{})",
            event.aggregate_type,
            event.aggregate_id,
            event.sequence,
            event.event_type,
            event.event_version
        ),
        message: e.to_string(),
    })
}

/// A projection could not fold an event. The runner stops (and retries) instead of skipping:
/// skipping would silently lose a change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectionError {
    #[error("cannot decode {at}: {message}")]
    Decode { at: String, message: String },
    #[error("{at}: {message}")]
    Inconsistent { at: String, message: String },
}

/// A read model: one topic of the sync stream and one table of current documents.
///
/// Implementations are pure (no I/O, no clock). `Doc` is the document, serialised as the
/// stream payload (field order is the payload's).
pub trait Projection: Send + Sync + 'static {
    type Doc: Clone + Send + Sync + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug;

    /// The projector's name (its checkpoint row), e.g. `run_summaries`.
    const NAME: &'static str;
    /// The sync topic it writes, e.g. `runtime.run_summaries`.
    const TOPIC: &'static str;
    /// The current-documents table (`runtime.<TABLE>` in PostgreSQL, `runtime_<TABLE>` in
    /// SQLite; a `<TABLE>_rebuild` shadow exists next to it).
    const TABLE: &'static str;
    /// `projection_version` in every payload. Changing it makes the runner rebuild this read
    /// model (a new epoch of its topic) when it next starts.
    const VERSION: u32;
    /// The aggregate types whose events it reads.
    const AGGREGATE_TYPES: &'static [&'static str];
    /// Documents are a history (one per event, never changed, pruned with the stream) rather
    /// than current state; priors are never loaded.
    const DOCS_ARE_EVENTS: bool = false;
    /// Whether `apply` needs [`ProjectedEvent::birth`].
    const NEEDS_BIRTH: bool = false;

    /// Brings a stored event of one of [`Projection::AGGREGATE_TYPES`] to the current shape;
    /// `None` when it already has it (the common case: no copy is made).
    fn upcast(_event: &SerializedEvent) -> Option<SerializedEvent> {
        None
    }

    /// The document an event may change; `None` when it changes none.
    fn doc_key(event: &SerializedEvent) -> Option<String>;

    /// Folds `event` into the document in `slot` (`None`: it does not exist yet), in place;
    /// returns whether the document changed (`false` leaves `slot` as it was). On an error the
    /// slot's content is unspecified (the runner discards the batch).
    ///
    /// # Errors
    /// When the event cannot be decoded or contradicts the document.
    fn apply(
        slot: &mut Option<Self::Doc>,
        event: &ProjectedEvent<'_>,
    ) -> Result<bool, ProjectionError>;

    /// Who may read the document.
    fn owner(doc: &Self::Doc) -> DocOwner;

    /// The document's recorded projection time (the time of the event that made it).
    fn projected_at(doc: &Self::Doc) -> Timestamp;
}

/// Folds events (already in commit order) into documents with their versions, exactly as the
/// runner does but in memory: the reference the tests and the drift check compare the tables
/// with. Births are looked up among the given events.
///
/// # Errors
/// The first [`ProjectionError`].
pub fn fold<P: Projection>(
    events: &[StoredEvent],
) -> Result<std::collections::BTreeMap<String, (P::Doc, u64)>, ProjectionError> {
    let mut docs: std::collections::BTreeMap<String, (P::Doc, u64)> = Default::default();
    let mut births: std::collections::HashMap<(String, String), SerializedEvent> =
        Default::default();
    for stored in events {
        if !P::AGGREGATE_TYPES.contains(&stored.event.aggregate_type.as_str()) {
            continue;
        }
        let upcast = P::upcast(&stored.event);
        let event = upcast.as_ref().unwrap_or(&stored.event);
        if event.sequence == 1 {
            births.insert(
                (event.aggregate_type.clone(), event.aggregate_id.clone()),
                event.clone(),
            );
        }
        let Some(key) = P::doc_key(event) else {
            continue;
        };
        let birth = births.get(&(event.aggregate_type.clone(), event.aggregate_id.clone()));
        let projected = ProjectedEvent {
            stored,
            event,
            recorded_at: recorded_at(stored),
            birth,
        };
        let prior = docs.remove(&key);
        let version = prior.as_ref().map_or(0, |(_, v)| *v);
        let mut slot = prior.map(|(d, _)| d);
        let changed = P::apply(&mut slot, &projected)?;
        if let Some(doc) = slot {
            docs.insert(key, (doc, if changed { version + 1 } else { version }));
        }
    }
    Ok(docs)
}

/// The event's recorded time (from its metadata); events written without one (by foreign
/// writers) fall back to the epoch, which keeps projections deterministic.
pub fn recorded_at(stored: &StoredEvent) -> Timestamp {
    stored.recorded_at().unwrap_or(Timestamp::EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_filter_matches_users_guests_and_tenants() {
        let owner = DocOwner {
            user_id: Some("1".into()),
            guest_scope: None,
            org_id: Some("org_a".into()),
        };
        let user = |u: &str, org: Option<&str>| OwnerFilter::Principal {
            user_id: Some(u.into()),
            guest_scope: None,
            org_id: org.map(Into::into),
        };
        assert!(OwnerFilter::Any.matches(&owner));
        assert!(
            !user("1", None).matches(&owner),
            "an org's doc needs the org's claim"
        );
        assert!(user("1", Some("org_a")).matches(&owner));
        let personal = DocOwner {
            org_id: None,
            ..owner.clone()
        };
        assert!(user("1", None).matches(&personal));
        assert!(
            !user("1", Some("org_a")).matches(&personal),
            "an org claim reaches only its org"
        );
        assert!(!user("1", Some("org_b")).matches(&owner));
        assert!(!user("2", None).matches(&owner));
        let guest = OwnerFilter::Principal {
            user_id: None,
            guest_scope: Some("g".into()),
            org_id: None,
        };
        assert!(!guest.matches(&owner));
        assert!(!user("1", None).matches(&DocOwner::default()));
    }
}

//! Chain hashes while exporting: the stored ones taken out of an event's metadata, the ones
//! recomputed for rows written before the chain existed, and each aggregate's head.

use aggregates::chain::{self, EventContent};
use anyhow::Context;
use engine::Database;
use serde_json::{Map, Value};

use super::FastMap;
use crate::audit::source::{aggregate_rows, AuditRow};

/// The chain hash of `aggregate_type/aggregate_id` at `sequence` (for the first event of an
/// aggregate in a time-range export): the stored one, or recomputed from the aggregate's start
/// for rows written before the chain existed.
pub(super) async fn chain_through(
    database: &Database,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> anyhow::Result<Option<String>> {
    let at = aggregate_rows(database, aggregate_type, aggregate_id, sequence, sequence).await?;
    if let Some(row) = at.first() {
        let metadata: Value = serde_json::from_str(&row.metadata)?;
        if let Some(stored) = metadata.get(chain::CHAIN_HASH_KEY).and_then(Value::as_str) {
            return Ok(Some(stored.to_owned()));
        }
    }
    let mut prev: Option<String> = None;
    for row in aggregate_rows(database, aggregate_type, aggregate_id, 1, sequence).await? {
        let metadata: Value = serde_json::from_str(&row.metadata)?;
        prev = Some(
            match metadata.get(chain::CHAIN_HASH_KEY).and_then(Value::as_str) {
                Some(stored) => stored.to_owned(),
                None => {
                    let payload: Value = serde_json::from_str(&row.payload)?;
                    chain::link(prev.as_deref(), &content_of(&row, &payload, &metadata)).1
                }
            },
        );
    }
    Ok(prev)
}

pub(super) fn content_of<'a>(
    row: &'a AuditRow,
    payload: &'a Value,
    metadata: &'a Value,
) -> EventContent<'a> {
    EventContent {
        aggregate_type: &row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        sequence: row.sequence as u64,
        event_type: &row.event_type,
        event_version: &row.event_version,
        payload,
        metadata,
    }
}

/// Per-aggregate state while exporting.
pub(super) struct Head {
    pub(super) first_sequence: i64,
    pub(super) last_sequence: i64,
    pub(super) chain_hash: String,
}

/// The heads of the aggregates seen so far, by type then id (looked up without building a key
/// per event).
#[derive(Default)]
pub(super) struct Heads {
    by_type: FastMap<String, FastMap<String, Head>>,
    pub(super) len: u64,
}

impl Heads {
    pub(super) fn get(&self, aggregate_type: &str, aggregate_id: &str) -> Option<&Head> {
        self.by_type.get(aggregate_type)?.get(aggregate_id)
    }

    /// `row` is the aggregate's latest event, with `chain_hash`.
    pub(super) fn advance(&mut self, row: &AuditRow, chain_hash: String) {
        if let Some(head) = self
            .by_type
            .get_mut(&row.aggregate_type)
            .and_then(|ids| ids.get_mut(&row.aggregate_id))
        {
            head.last_sequence = row.sequence;
            head.chain_hash = chain_hash;
            return;
        }
        self.by_type
            .entry(row.aggregate_type.clone())
            .or_default()
            .insert(
                row.aggregate_id.clone(),
                Head {
                    first_sequence: row.sequence,
                    last_sequence: row.sequence,
                    chain_hash,
                },
            );
        self.len += 1;
    }

    /// Every head, sorted by type then id.
    pub(super) fn sorted(&self) -> Vec<(&String, &String, &Head)> {
        let mut all: Vec<_> = self
            .by_type
            .iter()
            .flat_map(|(t, ids)| ids.iter().map(move |(id, head)| (t, id, head)))
            .collect();
        all.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        all
    }
}

/// An event's stored metadata parsed into a map (the path for every shape
/// [`super::metadata::split_metadata`] leaves alone): the map without string chain keys, and the
/// values an export reads.
pub(super) struct ParsedMetadata {
    pub(super) rest: Map<String, Value>,
    pub(super) recorded_at: Option<String>,
    pub(super) content_hash: Option<String>,
    pub(super) chain_hash: Option<String>,
}

impl ParsedMetadata {
    pub(super) fn parse(row: &AuditRow) -> anyhow::Result<Self> {
        let mut rest: Map<String, Value> = serde_json::from_str(&row.metadata)
            .with_context(|| format!("metadata of {}", name(row)))?;
        let recorded_at = rest
            .get("recorded_at")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let content_hash = take_str(&mut rest, chain::CONTENT_HASH_KEY);
        let chain_hash = take_str(&mut rest, chain::CHAIN_HASH_KEY);
        Ok(Self {
            rest,
            recorded_at,
            content_hash,
            chain_hash,
        })
    }
}

fn take_str(metadata: &mut Map<String, Value>, key: &str) -> Option<String> {
    match metadata.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            // Not ours: keep it in the hashed metadata.
            metadata.insert(key.to_owned(), other);
            None
        }
        None => None,
    }
}

/// `aggregate_type/aggregate_id#sequence` of a row, for messages.
pub(super) fn name(row: &AuditRow) -> String {
    format!(
        "{}/{}#{}",
        row.aggregate_type, row.aggregate_id, row.sequence
    )
}

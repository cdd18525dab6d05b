//! [`LeafBuilder`]: the leaf of a stored event, and the chain hash of rows stored before the
//! chain existed.

use std::collections::HashMap;

use aggregates::chain::{self, EventContent};
use serde_json::Value;

use super::StoreError;
use crate::audit_log::leaf::{disclose, event_leaf, has_secret, may_hold_secrets, RedactionKey};
use crate::audit_log::merkle::Hash;
use crate::journal::{AnyJournal, Journal, RawStoredEvent, StoredEvent};

/// Computes leaves of stored events: redaction and the chain hash of rows that have none
/// stored (written before the chain existed), continued from the aggregate's previous event.
pub struct LeafBuilder {
    journal: AnyJournal,
    key: RedactionKey,
    /// The last chain hash seen per aggregate, for rows without a stored one.
    heads: HashMap<(String, String), String>,
}

impl LeafBuilder {
    pub fn new(journal: AnyJournal, key: RedactionKey) -> Self {
        Self {
            journal,
            key,
            heads: HashMap::new(),
        }
    }

    /// The leaf hash of `event` as read with its stored text ([`AnyJournal::read_all_raw`]):
    /// the same as [`LeafBuilder::leaf`] of the parsed event, without parsing the payload when
    /// the stored content and chain hashes are there and no field can be secret (the common
    /// case: the leaf is then `event_leaf(chain_hash, content_hash)`, as `leaf` computes it).
    ///
    /// # Errors
    /// When the stored text is not JSON, or as [`LeafBuilder::leaf`].
    pub async fn leaf_raw(&mut self, raw: RawStoredEvent) -> Result<Hash, StoreError> {
        // A key spelled with `\u` escapes would escape the text scan: those take the full path.
        if !may_hold_secrets(&raw.payload) && !raw.payload.contains("\\u") {
            let metadata: Value = serde_json::from_str(&raw.metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata of an event: {e}")))?;
            let stored = |key: &str| metadata.get(key).and_then(Value::as_str);
            if let (Some(content_hash), Some(chain_hash)) = (
                stored(chain::CONTENT_HASH_KEY),
                stored(chain::CHAIN_HASH_KEY),
            ) {
                if !has_secret(&metadata) {
                    let leaf = event_leaf(chain_hash, content_hash);
                    let chain_hash = chain_hash.to_owned();
                    self.remember(raw.aggregate_type, raw.aggregate_id, chain_hash);
                    return Ok(leaf);
                }
            }
        }
        let event = raw.parse()?;
        self.leaf(&event).await
    }

    /// Records `chain_hash` as the latest of its aggregate, for later rows without one.
    fn remember(&mut self, aggregate_type: String, aggregate_id: String, chain_hash: String) {
        if self.heads.len() > 100_000 {
            self.heads.clear();
        }
        self.heads
            .insert((aggregate_type, aggregate_id), chain_hash);
    }

    /// The leaf hash of `event`.
    ///
    /// # Errors
    /// When an earlier event of a legacy aggregate cannot be read.
    pub async fn leaf(&mut self, event: &StoredEvent) -> Result<Hash, StoreError> {
        let e = &event.event;
        let content = EventContent {
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence: e.sequence as u64,
            event_type: &e.event_type,
            event_version: &e.event_version,
            payload: &e.payload,
            metadata: &e.metadata,
        };
        // The engine stores each event's content hash beside it (what its chain hash commits
        // to); the tree reuses it rather than re-canonicalising and hashing every payload. A
        // stored hash that does not match its content is caught where content is checked:
        // export and `audit verify` recompute it, as does `replay --journal`. Legacy events
        // without one are hashed here.
        let content_hash = e
            .metadata
            .get(chain::CONTENT_HASH_KEY)
            .and_then(Value::as_str)
            .map_or_else(|| content.content_hash(), str::to_owned);
        let stored_chain = e
            .metadata
            .get(chain::CHAIN_HASH_KEY)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let key = (e.aggregate_type.clone(), e.aggregate_id.clone());
        let chain_hash = match stored_chain {
            Some(stored) => stored,
            None => {
                let prev = match self.heads.get(&key) {
                    Some(prev) => Some(prev.clone()),
                    None if e.sequence <= 1 => None,
                    None => {
                        chain_before(
                            &self.journal,
                            &e.aggregate_type,
                            &e.aggregate_id,
                            e.sequence as u64,
                        )
                        .await?
                    }
                };
                chain::chain_hash(prev.as_deref(), &content_hash)
            }
        };
        let disclosed = disclose(&self.key, &content, &content_hash);
        let leaf = event_leaf(&chain_hash, &disclosed.disclosed_hash);
        self.remember(key.0, key.1, chain_hash);
        Ok(leaf)
    }
}

/// The chain hash of an aggregate's event `sequence - 1`: stored, or computed from its start.
async fn chain_before(
    journal: &AnyJournal,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
) -> Result<Option<String>, StoreError> {
    let rows = journal
        .load_stored(aggregate_type, aggregate_id, 0, (sequence - 1) as usize)
        .await?;
    let mut prev: Option<String> = None;
    for row in rows {
        let e = &row.event;
        prev = Some(
            match e
                .metadata
                .get(chain::CHAIN_HASH_KEY)
                .and_then(Value::as_str)
            {
                Some(stored) => stored.to_owned(),
                None => {
                    let content = EventContent {
                        aggregate_type: &e.aggregate_type,
                        aggregate_id: &e.aggregate_id,
                        sequence: e.sequence as u64,
                        event_type: &e.event_type,
                        event_version: &e.event_version,
                        payload: &e.payload,
                        metadata: &e.metadata,
                    };
                    chain::link(prev.as_deref(), &content).1
                }
            },
        );
    }
    Ok(prev)
}

//! Reads from the stored nodes: roots, inclusion and consistency proofs of any size the tree
//! has reached, and which leaf an event is.

use std::collections::HashMap;

use sqlx::Row;

use super::{table, to_u64, AuditStore, LeafRow, StoreError};
use crate::audit_log::merkle::{self, Hash, NodeId, Span};
use crate::db::Database;

impl AuditStore {
    /// Reads the hashes of `ids` (missing ones are absent from the map).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let t = table(&self.database, "audit_tree_nodes");
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let clauses: Vec<String> = (0..chunk.len())
                .map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "SELECT level, idx, hash FROM {t} WHERE {}",
                clauses.join(" OR ")
            );
            let rows = on_pool!(&self.database, pool => {
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(i16::from(id.level)).bind(id.index as i64);
                }
                query.fetch_all(pool).await?
                    .into_iter()
                    .map(|row| {
                        let level: i16 = row.try_get("level")?;
                        let idx: i64 = row.try_get("idx")?;
                        let hash: Vec<u8> = row.try_get("hash")?;
                        Ok((level, idx, hash))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (level, idx, hash) in rows {
                let hash: Hash = hash.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("node {level}/{idx} is not 32 bytes"))
                })?;
                out.insert(
                    NodeId {
                        level: level as u8,
                        index: idx as u64,
                    },
                    hash,
                );
            }
        }
        Ok(out)
    }

    async fn span_hashes(&self, spans: &[Span]) -> Result<Vec<Hash>, StoreError> {
        let mut ids: Vec<NodeId> = spans
            .iter()
            .flat_map(|s| merkle::perfect_nodes(*s))
            .collect();
        ids.sort();
        ids.dedup();
        let nodes = self.nodes(&ids).await?;
        spans
            .iter()
            .map(|span| {
                merkle::span_hash(*span, |id| nodes.get(&id).copied()).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "a node of leaves {}..{} is missing",
                        span.start, span.end
                    ))
                })
            })
            .collect()
    }

    /// The root of the first `size` leaves.
    ///
    /// # Errors
    /// [`StoreError::BeyondTree`] past the tree, or a database failure.
    pub async fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.check_size(size).await?;
        Ok(self
            .span_hashes(&[Span {
                start: 0,
                end: size,
            }])
            .await?
            .pop()
            .expect("one span"))
    }

    async fn check_size(&self, size: u64) -> Result<u64, StoreError> {
        let have = self.state().await?.tree_size;
        if size > have {
            return Err(StoreError::BeyondTree {
                asked: size,
                size: have,
            });
        }
        Ok(have)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    ///
    /// # Errors
    /// Out of range, or a database failure.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size).await?;
        let spans = merkle::inclusion_spans(index, size)?;
        self.span_hashes(&spans).await
    }

    /// Inclusion proofs of many leaves in the tree of `size` leaves, with one node read.
    ///
    /// # Errors
    /// Out of range, or a database failure.
    pub async fn inclusion_proofs(
        &self,
        indices: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        let mut all_spans = Vec::with_capacity(indices.len());
        for index in indices {
            all_spans.push(merkle::inclusion_spans(*index, size)?);
        }
        let flat: Vec<Span> = all_spans.iter().flatten().copied().collect();
        let mut hashes = self.span_hashes(&flat).await?.into_iter();
        Ok(all_spans
            .iter()
            .map(|spans| hashes.by_ref().take(spans.len()).collect())
            .collect())
    }

    /// The consistency proof from `old_size` to `new_size`.
    ///
    /// # Errors
    /// Out of range, or a database failure.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new_size).await?;
        let spans = merkle::consistency_spans(old_size, new_size)?;
        self.span_hashes(&spans).await
    }

    /// The leaf of an event, if the tree has reached it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn leaf_of_event(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<Option<LeafRow>, StoreError> {
        let t = table(&self.database, "audit_tree_leaves");
        // The journal's own key finds the event's position; the position index its leaf.
        let sql = format!(
            "SELECT l.leaf_index, l.transaction_id, l.position FROM events e
               JOIN {t} l ON l.position = e.position
              WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3"
        );
        let row = on_pool!(&self.database, pool => {
            match sqlx::query(&sql)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence as i64)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some((
                    row.try_get::<i64, _>("leaf_index")?,
                    row.try_get::<i64, _>("transaction_id")?,
                    row.try_get::<i64, _>("position")?,
                )),
                None => None,
            }
        });
        row.map(|(leaf_index, transaction_id, position)| {
            Ok(LeafRow {
                leaf_index: to_u64(leaf_index, "leaf_index")?,
                transaction_id,
                position,
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence: sequence as i64,
            })
        })
        .transpose()
    }

    /// Leaf indices of the events at `positions` (those the tree has reached).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn leaves_at_positions(
        &self,
        positions: &[i64],
    ) -> Result<HashMap<i64, u64>, StoreError> {
        let t = table(&self.database, "audit_tree_leaves");
        let mut out = HashMap::with_capacity(positions.len());
        for chunk in positions.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT position, leaf_index FROM {t} WHERE position IN ({})",
                params.join(", ")
            );
            let rows: Vec<(i64, i64)> = on_pool!(&self.database, pool => {
                let mut query = sqlx::query(&sql);
                for p in chunk {
                    query = query.bind(*p);
                }
                query.fetch_all(pool).await?
                    .into_iter()
                    .map(|row| Ok((row.try_get("position")?, row.try_get("leaf_index")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (position, leaf) in rows {
                out.insert(position, to_u64(leaf, "leaf_index")?);
            }
        }
        Ok(out)
    }

    /// The stored leaf hashes of leaves `from..to`, in order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        let t = table(&self.database, "audit_tree_nodes");
        let sql = format!(
            "SELECT idx, hash FROM {t} WHERE level = 0 AND idx >= $1 AND idx < $2 ORDER BY idx"
        );
        let rows: Vec<(i64, Vec<u8>)> = on_pool!(&self.database, pool => {
            sqlx::query(&sql)
                .bind(from as i64)
                .bind(to as i64)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| Ok((row.try_get("idx")?, row.try_get("hash")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(i, h)| {
                let hash: Hash = h
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("leaf {i} is not 32 bytes")))?;
                Ok((to_u64(i, "idx")?, hash))
            })
            .collect()
    }
}

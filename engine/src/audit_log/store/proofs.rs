//! Reads from the stored tiles: roots, inclusion and consistency proofs of any size the tree
//! has reached, and which leaf an event is.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::tiles::{decode_cursors, node_from_tiles, tile_of, Tile, TileId, TILE_WIDTH};
use super::{table, to_u64, AuditStore, LeafRow, StoreError};
use crate::audit_log::merkle::{self, Hash, NodeId, Span};
use crate::db::Database;
use crate::journal::GlobalCursor;

impl AuditStore {
    /// Reads the tiles `ids` (missing ones are absent), level-0 tiles with their cursors when
    /// `with_cursors`.
    ///
    /// # Errors
    /// When the database fails or a stored tile is malformed.
    pub(super) async fn read_tiles(
        &self,
        ids: &[TileId],
        with_cursors: bool,
    ) -> Result<Vec<Tile>, StoreError> {
        let t = table(&self.database, "audit_tree_tiles");
        let cursors = if with_cursors {
            "cursors"
        } else {
            "NULL AS cursors"
        };
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let clauses: Vec<String> = (0..chunk.len())
                .map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "SELECT level, idx, hashes, {cursors} FROM {t} WHERE {}",
                clauses.join(" OR ")
            );
            let rows = on_pool!(&self.database, pool => {
                let mut query = sqlx::query(&sql);
                for (level, index) in chunk {
                    query = query.bind(i16::from(*level)).bind(*index as i64);
                }
                tile_rows!(query.fetch_all(pool).await?)
            });
            out.extend(decode_rows(rows)?);
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
        let mut tile_ids: Vec<TileId> = ids.iter().map(|id| tile_of(*id)).collect();
        tile_ids.sort_unstable();
        tile_ids.dedup();
        let tiles: BTreeMap<TileId, Tile> = self
            .read_tiles(&tile_ids, false)
            .await?
            .into_iter()
            .map(|t| (t.id(), t))
            .collect();
        let nodes: HashMap<NodeId, Hash> = ids
            .iter()
            .filter_map(|id| node_from_tiles(*id, &tiles).map(|h| (*id, h)))
            .collect();
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
        // The journal's own key finds the event's cursor; the cursor its leaf tile.
        let sql = "SELECT transaction_id, position FROM events
                    WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";
        let row: Option<(i64, i64)> = on_pool!(&self.database, pool => {
            match sqlx::query(sql)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence as i64)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some((row.try_get("transaction_id")?, row.try_get("position")?)),
                None => None,
            }
        });
        let Some((transaction_id, position)) = row else {
            return Ok(None);
        };
        let cursor = GlobalCursor::new(
            to_u64(transaction_id, "transaction_id")?,
            to_u64(position, "position")?,
        );
        Ok(self
            .leaves_at_cursors(&[cursor])
            .await?
            .get(&cursor)
            .map(|&leaf_index| LeafRow {
                leaf_index,
                transaction_id,
                position,
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence: sequence as i64,
            }))
    }

    /// Leaf indices of the events at `cursors` (those the tree has reached). Consecutive events
    /// share a leaf tile, read once.
    ///
    /// # Errors
    /// When the database fails or a stored tile is malformed.
    pub async fn leaves_at_cursors(
        &self,
        cursors: &[GlobalCursor],
    ) -> Result<HashMap<GlobalCursor, u64>, StoreError> {
        let t = table(&self.database, "audit_tree_tiles");
        // The only tile that can hold a cursor: the one whose first cursor is the greatest not
        // above it (cursors grow with the leaf index).
        let sql = format!(
            "SELECT idx, cursors FROM {t}
              WHERE level = 0 AND (first_transaction, first_position) <= ($1, $2)
              ORDER BY first_transaction DESC, first_position DESC LIMIT 1"
        );
        let mut sorted = cursors.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = HashMap::with_capacity(sorted.len());
        let mut tile: Option<(u64, Vec<GlobalCursor>)> = None;
        for cursor in sorted {
            let covers = |t: &(u64, Vec<GlobalCursor>)| {
                t.1.first().is_some_and(|f| *f <= cursor)
                    && t.1.last().is_some_and(|l| cursor <= *l)
            };
            if !tile.as_ref().is_some_and(covers) {
                let row: Option<(i64, Vec<u8>)> = on_pool!(&self.database, pool => {
                    match sqlx::query(&sql)
                        .bind(cursor.transaction() as i64)
                        .bind(cursor.position() as i64)
                        .fetch_optional(pool)
                        .await?
                    {
                        Some(row) => Some((row.try_get("idx")?, row.try_get("cursors")?)),
                        None => None,
                    }
                });
                tile = match row {
                    Some((idx, bytes)) => Some((
                        to_u64(idx, "idx")?,
                        decode_cursors(&bytes).map_err(StoreError::Corrupt)?,
                    )),
                    None => None,
                };
            }
            if let Some((idx, cursors)) = &tile {
                if let Ok(i) = cursors.binary_search(&cursor) {
                    out.insert(cursor, idx * TILE_WIDTH as u64 + i as u64);
                }
            }
        }
        Ok(out)
    }

    /// The stored leaf hashes of leaves `from..to`, in order (those the tree holds).
    ///
    /// # Errors
    /// When the database fails or a stored tile is malformed.
    pub async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let t = table(&self.database, "audit_tree_tiles");
        let sql = format!(
            "SELECT level, idx, hashes, NULL AS cursors FROM {t} WHERE level = 0 AND idx >= $1 AND idx <= $2 ORDER BY idx"
        );
        let width = TILE_WIDTH as u64;
        let rows = on_pool!(&self.database, pool => {
            tile_rows!(sqlx::query(&sql)
                .bind((from / width) as i64)
                .bind(((to - 1) / width) as i64)
                .fetch_all(pool)
                .await?)
        });
        let tiles = decode_rows(rows)?;
        let mut out = Vec::with_capacity((to - from) as usize);
        for tile in tiles {
            let base = tile.index * width;
            for (i, hash) in tile.hashes.into_iter().enumerate() {
                let index = base + i as u64;
                if (from..to).contains(&index) {
                    out.push((index, hash));
                }
            }
        }
        Ok(out)
    }
}

/// A tile row as read: `(level, idx, hashes, cursors)`.
type TileRow = (i16, i64, Vec<u8>, Option<Vec<u8>>);

/// Reads `(level, idx, hashes, cursors)` of each row (the same on both backends).
macro_rules! tile_rows {
    ($rows:expr) => {
        $rows
            .into_iter()
            .map(|row| {
                Ok::<TileRow, sqlx::Error>((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
            })
            .collect::<Result<Vec<TileRow>, sqlx::Error>>()?
    };
}
use tile_rows;

/// Tiles from their rows.
fn decode_rows(rows: Vec<TileRow>) -> Result<Vec<Tile>, StoreError> {
    rows.into_iter()
        .map(|(level, idx, hashes, cursors)| {
            let level = u8::try_from(level)
                .map_err(|_| StoreError::Corrupt(format!("tile level {level}")))?;
            Tile::decode(level, to_u64(idx, "idx")?, &hashes, cursors.as_deref())
                .map_err(StoreError::Corrupt)
        })
        .collect()
}

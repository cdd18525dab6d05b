//! How the tree is stored: tiles of 256 hashes, after Go's `tlog` tiles and Trillian's.
//!
//! A tile of tile-level `L` and index `i` holds the hashes of the perfect subtrees of node level
//! `8 L` numbered `256 i ..< 256 i + w`, left to right, `1 <= w <= 256`: level-0 tiles hold the
//! leaf hashes, a level-1 tile the roots of 256 complete level-0 tiles, and so on. Every other
//! node, `(8 L + k, j)` with `k < 8`, is the root of the `2^k` consecutive hashes of one
//! level-`L` tile starting at `j << k` ([`node_from_tiles`]); a tree of `n` leaves stores
//! `n / 255` rows instead of the `2 n` node rows of a table of every node.
//!
//! The right edge of the tree, one partial tile per level ([`Edge`]), is rewritten as it grows
//! (an upsert; a tile only ever grows, and never changes once it has 256 hashes). Level-0 tiles
//! also hold the journal cursor of each leaf, so which leaf an event is needs no row per event:
//! cursors grow with the leaf index, so the tile whose first cursor is the greatest not above an
//! event's cursor is the only one that can hold it (`AuditStore::leaves_at_cursors`).

use std::collections::{BTreeMap, BTreeSet};

use crate::audit_log::merkle::{self, Hash, NodeId};
use crate::journal::GlobalCursor;

/// Node levels per tile level.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;

/// A tile's place: `(tile level, index)`.
pub type TileId = (u8, u64);

/// One stored tile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tile {
    pub level: u8,
    pub index: u64,
    pub hashes: Vec<Hash>,
    /// The journal cursor of each leaf (level 0 only; empty above).
    pub cursors: Vec<GlobalCursor>,
}

impl Tile {
    fn new(level: u8, index: u64) -> Self {
        Self {
            level,
            index,
            hashes: Vec::with_capacity(TILE_WIDTH),
            cursors: Vec::new(),
        }
    }

    pub fn id(&self) -> TileId {
        (self.level, self.index)
    }

    /// The hashes, concatenated (the stored form).
    pub fn hash_bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// The cursors as 16 big-endian bytes each (the stored form); `None` above level 0.
    pub fn cursor_bytes(&self) -> Option<Vec<u8>> {
        (self.level == 0).then(|| {
            let mut out = Vec::with_capacity(self.cursors.len() * 16);
            for c in &self.cursors {
                out.extend_from_slice(&c.transaction().to_be_bytes());
                out.extend_from_slice(&c.position().to_be_bytes());
            }
            out
        })
    }

    /// The first leaf's cursor (level 0).
    pub fn first_cursor(&self) -> Option<GlobalCursor> {
        self.cursors.first().copied()
    }

    /// A tile from its stored form; `cursors` as read for a level-0 tile (`None`: not read).
    ///
    /// # Errors
    /// When the bytes are not whole hashes or cursors, the tile is empty or over-full, or a
    /// level-0 tile's cursors do not match its hashes one to one.
    pub fn decode(
        level: u8,
        index: u64,
        hashes: &[u8],
        cursors: Option<&[u8]>,
    ) -> Result<Self, String> {
        if hashes.is_empty() || hashes.len() % 32 != 0 || hashes.len() / 32 > TILE_WIDTH {
            return Err(format!(
                "tile {level}/{index} holds {} bytes of hashes",
                hashes.len()
            ));
        }
        let hashes: Vec<Hash> = hashes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let cursors = match (level, cursors) {
            (0, Some(bytes)) => {
                let cursors = decode_cursors(bytes)?;
                if cursors.len() != hashes.len() {
                    return Err(format!(
                        "leaf tile {index} holds {} hashes but {} cursors",
                        hashes.len(),
                        cursors.len()
                    ));
                }
                cursors
            }
            // Not read, or above level 0.
            (_, _) => Vec::new(),
        };
        Ok(Self {
            level,
            index,
            hashes,
            cursors,
        })
    }
}

/// Cursors from their stored form (16 big-endian bytes each).
///
/// # Errors
/// When the bytes are not whole cursors.
pub fn decode_cursors(bytes: &[u8]) -> Result<Vec<GlobalCursor>, String> {
    if bytes.len() % 16 != 0 {
        return Err(format!("{} bytes of cursors", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            GlobalCursor::new(
                u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(c[8..].try_into().expect("8 bytes")),
            )
        })
        .collect())
}

/// The tile that holds node `id`'s hash or the hashes it is the root of.
pub fn tile_of(id: NodeId) -> TileId {
    let level = id.level / TILE_HEIGHT;
    let k = id.level % TILE_HEIGHT;
    (level, (id.index << k) >> TILE_HEIGHT)
}

/// The hash of node `id` from the tiles read (`None` when its tile is missing or too short).
pub fn node_from_tiles(id: NodeId, tiles: &BTreeMap<TileId, Tile>) -> Option<Hash> {
    let k = id.level % TILE_HEIGHT;
    let tile = tiles.get(&tile_of(id))?;
    let first = ((id.index << k) % TILE_WIDTH as u64) as usize;
    let hashes = tile.hashes.get(first..first + (1usize << k))?;
    Some(merkle::root(hashes))
}

/// The tiles on the right edge of a tree of `size` leaves: one per level that has a partial
/// tile, each with the width it must have.
pub fn edge_tiles(size: u64) -> Vec<(TileId, usize)> {
    let mut out = Vec::new();
    let mut level = 0u8;
    let mut nodes = size;
    while nodes > 0 {
        let width = (nodes % TILE_WIDTH as u64) as usize;
        if width > 0 {
            out.push(((level, nodes / TILE_WIDTH as u64), width));
        }
        nodes /= TILE_WIDTH as u64;
        level += 1;
    }
    out
}

/// The growing right edge of the tree: the partial tile of each level. Pushing leaves completes
/// tiles, whose roots are pushed one level up.
#[derive(Debug)]
pub struct Edge {
    size: u64,
    /// The partial tile of each level, by level (an empty tile where the level has none).
    partial: Vec<Tile>,
    /// Tiles completed or extended since [`Edge::new`], to be written.
    dirty: BTreeSet<TileId>,
    completed: Vec<Tile>,
}

impl Edge {
    /// The edge of a tree of `size` leaves from its partial tiles (as [`edge_tiles`] names them).
    ///
    /// # Errors
    /// When a tile is missing or does not have the width the size implies.
    pub fn new(size: u64, tiles: &BTreeMap<TileId, Tile>) -> Result<Self, String> {
        let mut partial = Vec::new();
        let mut nodes = size;
        let mut level = 0u8;
        while nodes > 0 || level == 0 {
            let width = (nodes % TILE_WIDTH as u64) as usize;
            let index = nodes / TILE_WIDTH as u64;
            let tile = if width == 0 {
                Tile::new(level, index)
            } else {
                let tile = tiles.get(&(level, index)).ok_or_else(|| {
                    format!("edge tile {level}/{index} of size {size} is missing")
                })?;
                if tile.hashes.len() < width || (level == 0 && tile.cursors.len() < width) {
                    return Err(format!(
                        "edge tile {level}/{index} of size {size} holds {} hashes and {} cursors, not {width}",
                        tile.hashes.len(),
                        tile.cursors.len()
                    ));
                }
                // A longer stored tile would be a tree that grew past `size`: the caller's
                // tree row would not be current. Keep exactly what `size` covers.
                let mut tile = tile.clone();
                tile.hashes.truncate(width);
                tile.cursors.truncate(if level == 0 { width } else { 0 });
                tile
            };
            partial.push(tile);
            nodes /= TILE_WIDTH as u64;
            level += 1;
        }
        Ok(Self {
            size,
            partial,
            dirty: BTreeSet::new(),
            completed: Vec::new(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf of the event at `cursor`.
    pub fn push(&mut self, leaf: Hash, cursor: GlobalCursor) {
        self.size += 1;
        let mut level = 0usize;
        let mut hash = leaf;
        loop {
            if self.partial.len() == level {
                self.partial.push(Tile::new(level as u8, 0));
            }
            let tile = &mut self.partial[level];
            tile.hashes.push(hash);
            if level == 0 {
                tile.cursors.push(cursor);
            }
            self.dirty.insert(tile.id());
            if tile.hashes.len() < TILE_WIDTH {
                return;
            }
            let next = Tile::new(tile.level, tile.index + 1);
            let full = std::mem::replace(tile, next);
            hash = merkle::root(&full.hashes);
            self.dirty.remove(&full.id());
            self.completed.push(full);
            level += 1;
        }
    }

    /// The tiles to write: every tile completed, then every partial tile that changed. Writing
    /// them (upserting by id) makes the stored tree the tree of [`Edge::size`] leaves.
    pub fn into_changed(self) -> Vec<Tile> {
        let dirty = self.dirty;
        let mut out = self.completed;
        out.extend(
            self.partial
                .into_iter()
                .filter(|t| !t.hashes.is_empty() && dirty.contains(&t.id())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> Hash {
        merkle::leaf_hash(&i.to_be_bytes())
    }

    fn cursor(i: u64) -> GlobalCursor {
        GlobalCursor::new(i / 3, i * 7 + 1)
    }

    /// Stores `tiles` the way the store does: an upsert by id.
    fn store(into: &mut BTreeMap<TileId, Tile>, tiles: Vec<Tile>) {
        for t in tiles {
            into.insert(t.id(), t);
        }
    }

    /// Grows a stored tree in batches of the given sizes, as `extend` does.
    fn grow(batches: &[u64]) -> (BTreeMap<TileId, Tile>, Vec<Hash>) {
        let mut stored = BTreeMap::new();
        let mut leaves = Vec::new();
        let mut size = 0u64;
        for &n in batches {
            let mut edge = Edge::new(size, &stored).unwrap();
            for _ in 0..n {
                edge.push(leaf(size), cursor(size));
                leaves.push(leaf(size));
                size += 1;
            }
            assert_eq!(edge.size(), size);
            store(&mut stored, edge.into_changed());
        }
        (stored, leaves)
    }

    #[test]
    fn every_node_of_a_tiled_tree_equals_the_plain_tree() {
        for batches in [
            vec![1],
            vec![255, 1],
            vec![256],
            vec![257, 3, 1000],
            vec![70_000],
            vec![65_535, 1, 1, 300],
        ] {
            let (stored, leaves) = grow(&batches);
            let n = leaves.len() as u64;
            for level in 0..20u8 {
                let count = n >> level;
                for index in (0..count).step_by(((count / 50) as usize).max(1)) {
                    let id = NodeId { level, index };
                    let start = (index << level) as usize;
                    let want = merkle::root(&leaves[start..start + (1usize << level)]);
                    assert_eq!(
                        node_from_tiles(id, &stored),
                        Some(want),
                        "node {level}/{index} of {n} ({batches:?})"
                    );
                }
            }
            let rows = stored.len() as u64;
            assert!(rows <= n / 255 + 4, "{rows} tiles for {n} leaves");
        }
    }

    #[test]
    fn the_edge_loads_back_at_every_size() {
        let (stored, _) = grow(&[66_000]);
        for size in [0u64, 1, 255, 256, 257, 65_535, 65_536, 65_537, 66_000] {
            let needed = edge_tiles(size);
            let edge = Edge::new(size, &stored).unwrap();
            assert_eq!(edge.size(), size);
            for ((level, index), width) in needed {
                assert!(stored[&(level, index)].hashes.len() >= width);
            }
        }
        // A tile shorter than the size says is corrupt.
        let mut broken = stored.clone();
        broken.get_mut(&(0, 66_000 / 256)).unwrap().hashes.pop();
        assert!(Edge::new(66_000, &broken).is_err());
    }

    #[test]
    fn leaves_are_found_by_cursor_and_tiles_round_trip() {
        let (stored, _) = grow(&[600]);
        for i in [0u64, 1, 255, 256, 511, 599] {
            let tile = &stored[&(0, i / 256)];
            assert_eq!(
                tile.cursors.binary_search(&cursor(i)),
                Ok((i % 256) as usize)
            );
        }
        for tile in stored.values() {
            let back = Tile::decode(
                tile.level,
                tile.index,
                &tile.hash_bytes(),
                tile.cursor_bytes().as_deref(),
            )
            .unwrap();
            assert_eq!(&back, tile);
        }
        assert!(Tile::decode(0, 0, &[0u8; 32], Some(&[0u8; 15])).is_err());
        assert!(Tile::decode(0, 0, &[0u8; 64], Some(&[0u8; 16])).is_err());
        assert!(Tile::decode(1, 0, &[0u8; 31], None).is_err());
        assert!(Tile::decode(1, 0, &vec![0u8; 32 * 257], None).is_err());
    }
}

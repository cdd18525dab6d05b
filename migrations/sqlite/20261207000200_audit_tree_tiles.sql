-- The audit tree is stored as tiles of 256 hashes (docs/adr/0127-audit-tree-tiles.md,
-- engine/src/audit_log/store/tiles.rs): a tile of tile-level L and index i holds the hashes of
-- the perfect subtrees of node level 8L numbered 256i .. 256i + w (1 <= w <= 256); every other
-- node is computed from one tile. Level-0 tiles hold the leaf hashes and each leaf's journal
-- cursor (16 bytes: transaction, position, big-endian), and are found by their first cursor.
-- This replaces a node row per perfect subtree (about two per event) and a leaf row per event:
-- the maintainer now writes a handful of rows per batch (issue #11: the write path's throughput
-- with the tree running).
CREATE TABLE runtime_audit_tree_tiles
(
    level             INTEGER NOT NULL CHECK (level >= 0 AND level < 8),
    idx               INTEGER  NOT NULL CHECK (idx >= 0),
    hashes            BLOB     NOT NULL
        CHECK (length(hashes) >= 32 AND length(hashes) <= 8192 AND length(hashes) % 32 = 0),
    first_transaction INTEGER,
    first_position    INTEGER,
    cursors           BLOB,
    PRIMARY KEY (level, idx),
    CHECK ((level = 0) = (first_transaction IS NOT NULL AND first_position IS NOT NULL
                          AND cursors IS NOT NULL)),
    CHECK (cursors IS NULL OR length(cursors) * 2 = length(hashes))
);

CREATE INDEX runtime_audit_tree_tiles_first_cursor_idx
    ON runtime_audit_tree_tiles (level, first_transaction, first_position);

-- The node and leaf rows go; the tree is rebuilt from the journal by the maintainer (same
-- journal id and redaction key, so the same leaves and roots: the stored checkpoints stay valid
-- and are served again once the tree reaches their sizes; `replay --journal` checks them).
DROP TABLE runtime_audit_tree_nodes;
DROP TABLE runtime_audit_tree_leaves;
UPDATE runtime_audit_tree
   SET tree_size = 0, cursor_transaction = 0, cursor_position = 0;

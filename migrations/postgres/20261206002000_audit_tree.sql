-- The audit log (docs/audit.md, docs/adr/0090-audit-tree-and-checkpoints.md): an RFC 9162 Merkle
-- tree over the journal in global commit order, extended off the write path by the tree
-- maintainer, and the signed checkpoints taken of it.

-- One row: the tree's identity, its redaction key (salts of the commitments that replace secrets
-- in exports; never exported), and how far it has read the journal. Moves only in the
-- transaction that stores the leaves and nodes it counts, under this row's lock.
CREATE TABLE runtime.audit_tree
(
    id                 smallint NOT NULL PRIMARY KEY CHECK (id = 1),
    journal_id         text     NOT NULL,
    redaction_key      text     NOT NULL,
    tree_size          bigint   NOT NULL DEFAULT 0 CHECK (tree_size >= 0),
    cursor_transaction bigint   NOT NULL DEFAULT 0,
    cursor_position    bigint   NOT NULL DEFAULT 0,
    updated_at_ms      bigint   NOT NULL DEFAULT 0
);

-- Perfect subtrees: (level, idx) covers leaves [idx * 2^level, (idx + 1) * 2^level). Level 0
-- holds the leaf hashes. Written once, never updated.
CREATE TABLE runtime.audit_tree_nodes
(
    level smallint NOT NULL CHECK (level >= 0 AND level < 64),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Which event each leaf is.
CREATE TABLE runtime.audit_tree_leaves
(
    leaf_index     bigint NOT NULL PRIMARY KEY CHECK (leaf_index >= 0),
    transaction_id bigint NOT NULL,
    position       bigint NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL
);

CREATE UNIQUE INDEX audit_tree_leaves_position_idx ON runtime.audit_tree_leaves (position);
CREATE UNIQUE INDEX audit_tree_leaves_event_idx
    ON runtime.audit_tree_leaves (aggregate_type, aggregate_id, sequence);

-- Signed checkpoints, one per tree size taken.
CREATE TABLE runtime.audit_checkpoints
(
    tree_size     bigint NOT NULL PRIMARY KEY CHECK (tree_size >= 0),
    root_hash     text   NOT NULL,
    checkpoint    text   NOT NULL,
    created_at_ms bigint NOT NULL
);

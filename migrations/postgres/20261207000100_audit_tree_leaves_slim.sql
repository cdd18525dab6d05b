-- The audit tree's leaf rows no longer repeat which event they are (aggregate type, id and
-- sequence, and an index over them): the journal's own primary key finds an event's position,
-- and the position index finds its leaf. One leaf row per event is written by the tree
-- maintainer beside the journal's row; this halves what it indexes (issue #11: the write path
-- with the tree running).
DROP INDEX runtime.audit_tree_leaves_event_idx;
ALTER TABLE runtime.audit_tree_leaves
    DROP COLUMN aggregate_type,
    DROP COLUMN aggregate_id,
    DROP COLUMN sequence;

-- The audit tree's leaf rows no longer repeat which event they are (aggregate type, id and
-- sequence, and an index over them): the journal's own index finds an event's position, and the
-- position index finds its leaf (issue #11: the write path with the tree running).
DROP INDEX audit_tree_leaves_event_idx;
ALTER TABLE runtime_audit_tree_leaves DROP COLUMN aggregate_type;
ALTER TABLE runtime_audit_tree_leaves DROP COLUMN aggregate_id;
ALTER TABLE runtime_audit_tree_leaves DROP COLUMN sequence;

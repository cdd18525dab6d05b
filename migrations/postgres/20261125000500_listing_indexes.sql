-- Listing runs by thread and workers by owner from their birth events (engine::listing).
-- Partial expression indexes: only each aggregate's first event is indexed.
CREATE INDEX events_run_thread_idx
    ON events ((payload->'RunCreated'->>'thread_id'), position)
    WHERE aggregate_type = 'run' AND sequence = 1;

CREATE INDEX events_worker_owner_idx
    ON events ((payload->'WorkerRegistered'->'owner'->>'id'), position)
    WHERE aggregate_type = 'codex_worker' AND sequence = 1;

-- The run event stream read model (topic runtime.run_events): one document per run event, the
-- live transcript clients (the console) show. Same shape as every projection table.
CREATE TABLE runtime.sync_run_events
(
    doc_key           text   NOT NULL PRIMARY KEY,
    doc_version       bigint NOT NULL CHECK (doc_version >= 1),
    payload           json   NOT NULL,
    payload_hash      text   NOT NULL,
    watermark         bigint NOT NULL,
    owner_user_id     text,
    owner_guest_scope text,
    owner_org_id      text,
    projected_at_ms   bigint NOT NULL,
    updated_at_ms     bigint NOT NULL
);

CREATE TABLE runtime.sync_run_events_rebuild
(
    doc_key           text   NOT NULL PRIMARY KEY,
    doc_version       bigint NOT NULL CHECK (doc_version >= 1),
    payload           json   NOT NULL,
    payload_hash      text   NOT NULL,
    watermark         bigint NOT NULL,
    owner_user_id     text,
    owner_guest_scope text,
    owner_org_id      text,
    projected_at_ms   bigint NOT NULL,
    updated_at_ms     bigint NOT NULL
);

CREATE INDEX sync_run_events_updated_idx ON runtime.sync_run_events (updated_at_ms);

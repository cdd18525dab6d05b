-- Projections (docs/schema.md, docs/adr/0050-projector-runner.md): projector checkpoints and
-- leases, per-topic watermark sequences, the sync stream Khala delivers, and one current-document
-- table per read model (plus its `_rebuild` shadow, filled by a full rebuild and swapped in at
-- its end).

-- One row per projector: its place in the journal's global order, its lease (exactly one active
-- instance across every process on this database: each batch transaction locks this row and
-- checks lease_owner, so a process whose lease was taken over can no longer commit), and the
-- state of a full rebuild.
CREATE TABLE runtime.projection_checkpoints
(
    projector                  text    NOT NULL PRIMARY KEY,
    topic                      text    NOT NULL,
    projection_version         integer NOT NULL,
    cursor_transaction         bigint  NOT NULL DEFAULT 0,
    cursor_position            bigint  NOT NULL DEFAULT 0,
    events_projected           bigint  NOT NULL DEFAULT 0,
    lease_owner                text,
    lease_expires_at_ms        bigint  NOT NULL DEFAULT 0,
    -- An operator asked for a full rebuild (reproject --all); the lease holder starts it.
    rebuild_requested          boolean NOT NULL DEFAULT false,
    -- Non-null while a full rebuild runs: the version being built and its own cursor.
    rebuild_version            integer,
    rebuild_cursor_transaction bigint,
    rebuild_cursor_position    bigint,
    rebuild_events             bigint  NOT NULL DEFAULT 0,
    rebuild_started_at_ms      bigint,
    last_rebuilt_at_ms         bigint,
    updated_at_ms              bigint  NOT NULL DEFAULT 0
);

-- Per-topic watermarks. head_watermark is the last allocated watermark; it moves only in the
-- transaction that appends the stream rows it numbers (so a rollback gives the numbers back and
-- there is never a gap), under this row's lock (so watermarks are handed out in commit order).
CREATE TABLE runtime.sync_topic_sequences
(
    topic           text   NOT NULL PRIMARY KEY,
    head_watermark  bigint NOT NULL DEFAULT 0 CHECK (head_watermark >= 0),
    -- Cursors below this cannot be replayed (rows were pruned or belong to an older epoch).
    retention_floor bigint NOT NULL DEFAULT 0 CHECK (retention_floor >= 0),
    epoch           bigint NOT NULL DEFAULT 1 CHECK (epoch >= 1),
    -- The first watermark of the current epoch (0 for the first epoch).
    epoch_start     bigint NOT NULL DEFAULT 0,
    updated_at_ms   bigint NOT NULL DEFAULT 0
);

-- The sync stream: one row per document change, numbered 1, 2, 3 … per topic.
CREATE TABLE runtime.sync_stream_events
(
    topic             text   NOT NULL,
    watermark         bigint NOT NULL CHECK (watermark >= 1),
    doc_key           text   NOT NULL,
    doc_version       bigint NOT NULL CHECK (doc_version >= 1),
    payload           json   NOT NULL,
    payload_hash      text   NOT NULL,
    owner_user_id     text,
    owner_guest_scope text,
    owner_org_id      text,
    projected_at_ms   bigint NOT NULL,
    inserted_at_ms    bigint NOT NULL,
    PRIMARY KEY (topic, watermark)
);

CREATE INDEX sync_stream_events_inserted_idx ON runtime.sync_stream_events (topic, inserted_at_ms);

-- Current documents, one table per read model, and each one's rebuild shadow.
CREATE TABLE runtime.sync_run_summaries
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

CREATE TABLE runtime.sync_run_summaries_rebuild
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

CREATE INDEX sync_run_summaries_updated_idx ON runtime.sync_run_summaries (updated_at_ms);

CREATE TABLE runtime.sync_codex_worker_summaries
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

CREATE TABLE runtime.sync_codex_worker_summaries_rebuild
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

CREATE INDEX sync_codex_worker_summaries_updated_idx ON runtime.sync_codex_worker_summaries (updated_at_ms);

CREATE TABLE runtime.sync_codex_worker_events
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

CREATE TABLE runtime.sync_codex_worker_events_rebuild
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

CREATE INDEX sync_codex_worker_events_updated_idx ON runtime.sync_codex_worker_events (updated_at_ms);

CREATE TABLE runtime.sync_payments
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

CREATE TABLE runtime.sync_payments_rebuild
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

CREATE INDEX sync_payments_updated_idx ON runtime.sync_payments (updated_at_ms);

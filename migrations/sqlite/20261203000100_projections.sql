-- Projections (same schema and behaviour as migrations/postgres; see docs/schema.md).

CREATE TABLE runtime_projection_checkpoints
(
    projector                  TEXT    NOT NULL PRIMARY KEY,
    topic                      TEXT    NOT NULL,
    projection_version         INTEGER NOT NULL,
    cursor_transaction         INTEGER NOT NULL DEFAULT 0,
    cursor_position            INTEGER NOT NULL DEFAULT 0,
    events_projected           INTEGER NOT NULL DEFAULT 0,
    lease_owner                TEXT,
    lease_expires_at_ms        INTEGER NOT NULL DEFAULT 0,
    rebuild_requested          INTEGER NOT NULL DEFAULT 0,
    rebuild_version            INTEGER,
    rebuild_cursor_transaction INTEGER,
    rebuild_cursor_position    INTEGER,
    rebuild_events             INTEGER NOT NULL DEFAULT 0,
    rebuild_started_at_ms      INTEGER,
    last_rebuilt_at_ms         INTEGER,
    updated_at_ms              INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE runtime_sync_topic_sequences
(
    topic           TEXT    NOT NULL PRIMARY KEY,
    head_watermark  INTEGER NOT NULL DEFAULT 0 CHECK (head_watermark >= 0),
    retention_floor INTEGER NOT NULL DEFAULT 0 CHECK (retention_floor >= 0),
    epoch           INTEGER NOT NULL DEFAULT 1 CHECK (epoch >= 1),
    epoch_start     INTEGER NOT NULL DEFAULT 0,
    updated_at_ms   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE runtime_sync_stream_events
(
    topic             TEXT    NOT NULL,
    watermark         INTEGER NOT NULL CHECK (watermark >= 1),
    doc_key           TEXT    NOT NULL,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    inserted_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (topic, watermark)
);

CREATE INDEX runtime_sync_stream_events_inserted_idx ON runtime_sync_stream_events (topic, inserted_at_ms);

-- Current documents, one table per read model, and each one's rebuild shadow.
CREATE TABLE runtime_sync_run_summaries
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE TABLE runtime_sync_run_summaries_rebuild
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE INDEX runtime_sync_run_summaries_updated_idx ON runtime_sync_run_summaries (updated_at_ms);

CREATE TABLE runtime_sync_codex_worker_summaries
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE TABLE runtime_sync_codex_worker_summaries_rebuild
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE INDEX runtime_sync_codex_worker_summaries_updated_idx ON runtime_sync_codex_worker_summaries (updated_at_ms);

CREATE TABLE runtime_sync_codex_worker_events
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE TABLE runtime_sync_codex_worker_events_rebuild
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE INDEX runtime_sync_codex_worker_events_updated_idx ON runtime_sync_codex_worker_events (updated_at_ms);

CREATE TABLE runtime_sync_payments
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE TABLE runtime_sync_payments_rebuild
(
    doc_key           TEXT    NOT NULL PRIMARY KEY,
    doc_version       INTEGER NOT NULL CHECK (doc_version >= 1),
    payload           TEXT    NOT NULL,
    payload_hash      TEXT    NOT NULL,
    watermark         INTEGER NOT NULL,
    owner_user_id     TEXT,
    owner_guest_scope TEXT,
    owner_org_id      TEXT,
    projected_at_ms   INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

CREATE INDEX runtime_sync_payments_updated_idx ON runtime_sync_payments (updated_at_ms);

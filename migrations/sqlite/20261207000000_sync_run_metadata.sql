-- The run metadata read model (topic runtime.run_metadata): one document per run whose metadata
-- is too large to repeat in its run summary. Same shape as every projection table.
CREATE TABLE runtime_sync_run_metadata
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

CREATE TABLE runtime_sync_run_metadata_rebuild
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

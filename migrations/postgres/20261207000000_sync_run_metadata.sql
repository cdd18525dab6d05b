-- The run metadata read model (topic runtime.run_metadata): one document per run whose metadata
-- is too large to repeat in its run summary. Same shape as every projection table.
CREATE TABLE runtime.sync_run_metadata
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

CREATE TABLE runtime.sync_run_metadata_rebuild
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

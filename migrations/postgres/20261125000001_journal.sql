-- The runtime journal.
--
-- `events` and `snapshots` are postgres-es's tables with their column set unchanged, so the stock
-- postgres-es repository can read (and append to) this journal. Two columns are added to give
-- every event a gap-safe global order (docs/adr/0002-global-order.md):
--   position        allocation order inside the database (identity; NOT commit order on its own)
--   transaction_id  pg_current_xact_id() of the appending transaction, as bigint
-- Readers order by (transaction_id, position) and only read below the oldest running xid.

CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id bigint                       NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    CONSTRAINT events_pkey PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_global_order_idx ON events (transaction_id, position);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

CREATE SCHEMA IF NOT EXISTS runtime;

-- Idempotency-Key records. Written by the same statement that appends the command's events,
-- so a key exists if and only if its events do.
CREATE TABLE runtime.idempotency_keys
(
    scope           text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    first_sequence  bigint      NOT NULL,
    last_sequence   bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, idempotency_key)
);

CREATE INDEX idempotency_keys_created_at_idx ON runtime.idempotency_keys (created_at);

-- Single-use nonces of X-OA-RUNTIME-SIGNATURE tokens, shared by every process on this database.
CREATE TABLE runtime.auth_nonces
(
    nonce      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT auth_nonces_pkey PRIMARY KEY (nonce)
);

CREATE INDEX auth_nonces_expires_at_idx ON runtime.auth_nonces (expires_at);

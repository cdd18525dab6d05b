-- The embedded journal: the same logical schema as migrations/postgres, in SQLite.
-- SQLite runs one writer at a time, so `position` (AUTOINCREMENT, never reused) is handed out
-- in commit order and alone is a gap-safe global order; transaction_id stays 0.

CREATE TABLE events
(
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 0),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    transaction_id INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX events_aggregate_sequence_idx ON events (aggregate_type, aggregate_id, sequence);

CREATE TABLE snapshots
(
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

CREATE TABLE runtime_idempotency_keys
(
    scope           TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    first_sequence  INTEGER NOT NULL,
    last_sequence   INTEGER NOT NULL,
    created_at      TEXT    NOT NULL,
    PRIMARY KEY (scope, idempotency_key)
);

CREATE TABLE runtime_auth_nonces
(
    nonce      TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

CREATE INDEX runtime_auth_nonces_expires_at_idx ON runtime_auth_nonces (expires_at);

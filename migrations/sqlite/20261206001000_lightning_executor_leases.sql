-- One wallet executor per wallet (same schema and behaviour as migrations/postgres; ADR 0082).
CREATE TABLE lightning_executor_leases
(
    wallet_id     TEXT    NOT NULL PRIMARY KEY CHECK (wallet_id <> ''),
    holder        TEXT    NOT NULL CHECK (holder <> ''),
    epoch         INTEGER NOT NULL CHECK (epoch >= 1),
    expires_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- One wallet executor per wallet (docs/lightning.md, ADR 0082): the process holding a wallet's row
-- (holder, not expired) is the only one that reserves, sends, reconciles or releases that wallet's
-- payments. Taken with a conditional upsert (free, expired, or already mine) and renewed every
-- third of its TTL; epoch counts changes of holder.
CREATE TABLE lightning_executor_leases
(
    wallet_id     TEXT   NOT NULL PRIMARY KEY CHECK (wallet_id <> ''),
    holder        TEXT   NOT NULL CHECK (holder <> ''),
    epoch         BIGINT NOT NULL CHECK (epoch >= 1),
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Who owns a sync session, device or token id (same schema and behaviour as migrations/postgres).
CREATE TABLE sync_credential_owners
(
    kind          TEXT    NOT NULL CHECK (kind IN ('session', 'device', 'jti')),
    subject_id    TEXT    NOT NULL CHECK (subject_id <> ''),
    owner         TEXT    NOT NULL CHECK (owner <> ''),
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, subject_id)
);

CREATE INDEX sync_credential_owners_expires_at_idx ON sync_credential_owners (expires_at_ms);

-- What the operator did for others on the sync lane: append-only.
CREATE TABLE sync_operator_actions
(
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    action   TEXT    NOT NULL CHECK (action IN ('mint', 'revoke')),
    actor    TEXT    NOT NULL,
    subject  TEXT    NOT NULL,
    detail   TEXT    NOT NULL
);

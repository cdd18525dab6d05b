-- Who owns a sync session, device or token id (recorded when the runtime mints a sync token): a
-- principal revokes only what it owns; the operator revokes anything. First writer wins until
-- the row expires (no token naming it can still be accepted then). See docs/security.md.
CREATE TABLE sync_credential_owners
(
    kind          TEXT   NOT NULL CHECK (kind IN ('session', 'device', 'jti')),
    subject_id    TEXT   NOT NULL CHECK (subject_id <> ''),
    owner         TEXT   NOT NULL CHECK (owner <> ''),
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, subject_id)
);

CREATE INDEX sync_credential_owners_expires_at_idx ON sync_credential_owners (expires_at_ms);

-- What the operator did for others on the sync lane (mints for another principal or org,
-- revocations of another principal's sessions): append-only, never pruned by the runtime.
CREATE TABLE sync_operator_actions
(
    id       BIGSERIAL PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    action   TEXT   NOT NULL CHECK (action IN ('mint', 'revoke')),
    actor    TEXT   NOT NULL,
    subject  TEXT   NOT NULL,
    detail   TEXT   NOT NULL
);

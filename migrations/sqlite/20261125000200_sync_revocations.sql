-- Khala's revocation list (same schema and behaviour as migrations/postgres): sync sessions,
-- devices and single tokens (jti) that may no longer connect. A session/device row refuses every
-- token issued at or before revoked_at_ms; a jti row refuses that one token. Rows past
-- expires_at_ms can no longer match a valid token and are pruned.
CREATE TABLE sync_revocations
(
    kind          TEXT    NOT NULL CHECK (kind IN ('session', 'device', 'jti')),
    subject_id    TEXT    NOT NULL CHECK (subject_id <> ''),
    revoked_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    PRIMARY KEY (kind, subject_id)
);

CREATE INDEX sync_revocations_expires_at_idx ON sync_revocations (expires_at_ms);

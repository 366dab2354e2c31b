-- Amora authz service schema, version 1.
-- The same statements run on SQLite and PostgreSQL: portable types only
-- (TEXT, BIGINT), keys stored as base64 text, times as ms since the epoch.

CREATE TABLE devices (
    device_id       TEXT PRIMARY KEY,
    signing_key     TEXT NOT NULL,
    encryption_key  TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    revoked_at_ms   BIGINT
);

CREATE TABLE certificates (
    serial          TEXT PRIMARY KEY,
    device_id       TEXT NOT NULL REFERENCES devices (device_id),
    issued_at_ms    BIGINT NOT NULL,
    not_after_ms    BIGINT NOT NULL,
    revoked_at_ms   BIGINT
);

CREATE TABLE links (
    user_sub        TEXT NOT NULL,
    device_id       TEXT NOT NULL REFERENCES devices (device_id),
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (user_sub, device_id)
);

CREATE INDEX links_by_device ON links (device_id);

CREATE TABLE sessions (
    session_id      TEXT PRIMARY KEY,
    user_sub        TEXT NOT NULL,
    client_name     TEXT,
    signing_key     TEXT NOT NULL,
    encryption_key  TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL
);

CREATE INDEX sessions_by_user ON sessions (user_sub);

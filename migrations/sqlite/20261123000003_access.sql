-- Access control: issued access tokens (only a digest of each secret), per-tenant access
-- settings, and the audit log of every change.

CREATE TABLE access_tokens (
    id            TEXT    PRIMARY KEY,  -- public part of the token, the audit log's actor
    secret_sha256 BLOB    NOT NULL,     -- the secret itself is never stored
    role          TEXT    NOT NULL,     -- 'admin' or 'verifier'
    tenant        TEXT,                 -- NULL: every tenant (admin tokens only)
    description   TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT
) WITHOUT ROWID;

CREATE TABLE tenant_access (
    tenant                  TEXT    PRIMARY KEY,
    verifier_token_required INTEGER NOT NULL,
    updated_at              TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT    NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    tenant   TEXT,
    provider TEXT,
    before   TEXT,  -- JSON
    after    TEXT,  -- JSON
    client   TEXT
);

CREATE INDEX audit_events_tenant ON audit_events (tenant, id);

-- Access control: issued access tokens (only a digest of each secret), per-tenant access
-- settings, and the audit log of every change.

CREATE TABLE access_tokens (
    id            TEXT        PRIMARY KEY,  -- public part of the token, the audit log's actor
    secret_sha256 BYTEA       NOT NULL,     -- the secret itself is never stored
    role          TEXT        NOT NULL,     -- 'admin' or 'verifier'
    tenant        TEXT,                     -- NULL: every tenant (admin tokens only)
    description   TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    created_by    TEXT        NOT NULL,
    expires_at    TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);

CREATE TABLE tenant_access (
    tenant                  TEXT        PRIMARY KEY,
    verifier_token_required BOOLEAN     NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_events (
    id       BIGSERIAL   PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL,
    actor    TEXT        NOT NULL,
    action   TEXT        NOT NULL,
    tenant   TEXT,
    provider TEXT,
    before   TEXT,  -- JSON
    after    TEXT,  -- JSON
    client   TEXT
);

CREATE INDEX audit_events_tenant ON audit_events (tenant, id);

-- One row per registration, holding the registration and the provider's last good key set
-- with its refresh status, so a restarted node serves from here before any fetch.
CREATE TABLE providers (
    tenant               TEXT        NOT NULL,
    provider             TEXT        NOT NULL,
    jwks_url             TEXT        NOT NULL,
    policy               TEXT        NOT NULL,  -- JSON of the per-provider overrides
    revision             BIGINT      NOT NULL,  -- changes on every registration; fences refresh writes
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    version              BIGINT      NOT NULL DEFAULT 0,  -- 0 until the first good fetch
    jwks_json            BYTEA,                -- sanitized JWKS of `version`
    etag                 TEXT,
    last_modified        TEXT,
    cache_policy         TEXT,                 -- JSON of the http-cache-semantics policy
    fetched_at           TIMESTAMPTZ,
    fresh_until          TIMESTAMPTZ,
    last_attempt_at      TIMESTAMPTZ,
    last_error           TEXT,
    consecutive_failures BIGINT      NOT NULL DEFAULT 0,
    next_refresh_at      TIMESTAMPTZ,
    PRIMARY KEY (tenant, provider)
);

CREATE INDEX providers_next_refresh_at ON providers (next_refresh_at);

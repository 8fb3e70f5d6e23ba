-- One row per registration, holding the registration and the provider's last good key set
-- with its refresh status, so a restarted node serves from here before any fetch.
-- Timestamps are RFC 3339 text, as sqlx stores chrono values in SQLite.
CREATE TABLE providers (
    tenant               TEXT    NOT NULL,
    provider             TEXT    NOT NULL,
    jwks_url             TEXT    NOT NULL,
    policy               TEXT    NOT NULL,  -- JSON of the per-provider overrides
    revision             INTEGER NOT NULL,  -- changes on every registration; fences refresh writes
    created_at           TEXT    NOT NULL,
    updated_at           TEXT    NOT NULL,
    version              INTEGER NOT NULL DEFAULT 0,  -- 0 until the first good fetch
    jwks_json            BLOB,               -- sanitized JWKS of `version`
    etag                 TEXT,
    last_modified        TEXT,
    cache_policy         TEXT,               -- JSON of the http-cache-semantics policy
    fetched_at           TEXT,
    fresh_until          TEXT,
    last_attempt_at      TEXT,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    next_refresh_at      TEXT,
    PRIMARY KEY (tenant, provider)
) WITHOUT ROWID;

CREATE INDEX providers_next_refresh_at ON providers (next_refresh_at);

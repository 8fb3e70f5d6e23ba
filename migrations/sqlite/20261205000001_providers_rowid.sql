-- providers as a rowid table. A WITHOUT ROWID table keeps each row in its primary key's
-- b-tree, where at most about 1 KB of a row fits on its page: every provider holding a key
-- set (about 1 KB of JSON for two RSA keys) spilled into an overflow page of its own, so
-- 100,000 providers took 467 MB and a start read all of it. As a rowid table the same rows
-- take about a third of that. The columns, their order and the key are unchanged.
CREATE TABLE providers_rowid (
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
    cache_policy         TEXT,               -- JSON of the response's caching header fields
    fetched_at           TEXT,
    fresh_until          TEXT,
    last_attempt_at      TEXT,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    next_refresh_at      TEXT,
    change_seq           INTEGER NOT NULL DEFAULT 0,
    skipped_keys         TEXT,
    revoked_keys         TEXT,
    issuer               TEXT,
    discovery            TEXT,
    pushed               INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, provider)
);

INSERT INTO providers_rowid (
    tenant, provider, jwks_url, policy, revision, created_at, updated_at, version, jwks_json,
    etag, last_modified, cache_policy, fetched_at, fresh_until, last_attempt_at, last_error,
    consecutive_failures, next_refresh_at, change_seq, skipped_keys, revoked_keys, issuer,
    discovery, pushed)
SELECT
    tenant, provider, jwks_url, policy, revision, created_at, updated_at, version, jwks_json,
    etag, last_modified, cache_policy, fetched_at, fresh_until, last_attempt_at, last_error,
    consecutive_failures, next_refresh_at, change_seq, skipped_keys, revoked_keys, issuer,
    discovery, pushed
FROM providers;

DROP TABLE providers;
ALTER TABLE providers_rowid RENAME TO providers;
CREATE INDEX providers_next_refresh_at ON providers (next_refresh_at);

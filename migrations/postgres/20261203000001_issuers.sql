-- Providers registered by issuer (OpenID Connect Discovery, RFC 8414): the issuer exactly as
-- registered (jwks_url is then '', as SQLite cannot drop its NOT NULL), and what discovery
-- learnt, as JSON {"metadata": {"jwks_uri", "document", "confirmed_at", "fresh_until"},
-- "etag", "last_modified", "cache_policy", "status": {...}}. Both NULL for providers
-- registered by URL; discovery is NULL too before the first discovery.
ALTER TABLE providers ADD COLUMN issuer TEXT;
ALTER TABLE providers ADD COLUMN discovery TEXT;

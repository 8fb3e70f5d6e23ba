-- Key ids withheld by an administrator (RevokeKey), whatever the identity provider publishes,
-- as JSON [{"kid", "reason", "revoked_at", "revoked_by"}]; NULL when none are. jwks_json
-- keeps the set as fetched; what is published is that set without these kids.
ALTER TABLE providers ADD COLUMN revoked_keys TEXT;

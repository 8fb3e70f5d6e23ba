-- Keys of the last fetched document that keyrelay left out (unknown type, curve or
-- algorithm, or malformed), as JSON [{"kid": ..., "reason": {...}}]; NULL when none were.
ALTER TABLE providers ADD COLUMN skipped_keys TEXT;

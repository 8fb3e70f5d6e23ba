-- Providers whose key sets an administrator pushes (PublishKeySet) instead of keyrelay
-- fetching them: jwks_url is then '' and issuer NULL.
ALTER TABLE providers ADD COLUMN pushed INTEGER NOT NULL DEFAULT 0;

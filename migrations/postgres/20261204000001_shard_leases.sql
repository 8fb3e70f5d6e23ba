-- Scale-out: providers hash to a fixed number of scheduling shards, each with its own lease
-- and fencing term, and every replica refreshes the shards it holds.

-- The fleet's settings, one row. shard_count is read by every replica when it starts, so all
-- agree; change it only with every replica stopped (README, "Running on Postgres, as a fleet").
CREATE TABLE fleet_settings (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    shard_count INTEGER NOT NULL CHECK (shard_count BETWEEN 1 AND 4096)
);
INSERT INTO fleet_settings (shard_count) VALUES (64);

-- One row per shard. The holder may refresh the shard's providers and write their key sets
-- while expires_at (database clock) is in the future; term grows with every new holder and
-- fences every refresh write. A free shard has expired (never held: '-infinity', term 0).
-- Replicas add the rows a larger shard_count needs when they start.
CREATE TABLE shard_leases (
    shard      INTEGER     PRIMARY KEY CHECK (shard >= 0),
    holder     TEXT        NOT NULL,
    term       BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO shard_leases (shard, holder, term, expires_at)
SELECT shard, '', 0, '-infinity' FROM generate_series(0, 63) AS shard;

-- The single refresh lease of earlier versions. Dropping it makes a replica of an earlier
-- version stand down during a rolling upgrade (its renewal and fenced writes fail), so the
-- two versions never refresh side by side.
DROP TABLE leases;

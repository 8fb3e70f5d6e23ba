-- Fleet mode: ordering of changes across replicas, the refresh leader's lease, and the
-- replicas' heartbeats.

-- Every write to a provider row takes the next value: a replica applies a state only if it is
-- newer than the one it holds, whatever order notifications and local writes arrive in.
CREATE SEQUENCE provider_change_seq;
ALTER TABLE providers ADD COLUMN change_seq BIGINT NOT NULL DEFAULT nextval('provider_change_seq');

-- One row per scheduling shard (one shard today). The holder may refresh and write key sets
-- while expires_at (database clock) is in the future; term grows with every new holder and
-- fences every write the leader makes.
CREATE TABLE leases (
    shard      TEXT        PRIMARY KEY,
    holder     TEXT        NOT NULL,
    term       BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE replicas (
    id           TEXT        PRIMARY KEY,
    address      TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

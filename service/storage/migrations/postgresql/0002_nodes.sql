-- Several nodes on one database (docs/scaling.md).

-- Each claim of a delivery carries a fencing token and the node that made it; an outcome is
-- recorded only under the current token, so a node that lost its lease cannot overwrite the
-- work of the node that took it over.
ALTER TABLE deliveries ADD COLUMN claim_token BIGINT;
ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
CREATE INDEX deliveries_owner ON deliveries (lease_owner) WHERE status = 'inflight';

-- Every running node, with a heartbeat in the database's clock (epoch seconds): a node whose
-- heartbeat is older than the node timeout is dead, and its leases are handed back.
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    started_at    DOUBLE PRECISION NOT NULL,
    heartbeat_at  DOUBLE PRECISION NOT NULL
);

-- The singleton work (deadlines, retention, the stale-node sweep) runs on the node holding this
-- lease; it moves when the holder stops renewing it. ``term`` grows with every change of hands.
CREATE TABLE leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    node_id     TEXT NOT NULL,
    term        BIGINT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);

-- The per-key request budget shared by every node: a token bucket per API key.
CREATE TABLE rate_buckets (
    key_id      TEXT PRIMARY KEY,
    tokens      DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

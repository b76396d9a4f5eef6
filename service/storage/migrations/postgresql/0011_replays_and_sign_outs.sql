-- A replayed callback (the same bytes again for the same job) is stored once and counted: each
-- stored body keeps its SHA-256, how many times it came again and when it last did
-- (docs/architecture.md, "Bounded inbound memory"). Rows stored before this have no digest and
-- are never matched.
ALTER TABLE callbacks ADD COLUMN digest TEXT;
ALTER TABLE callbacks ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
ALTER TABLE callbacks ADD COLUMN last_replay_at DOUBLE PRECISION;
CREATE UNIQUE INDEX callbacks_replay ON callbacks (job_id, digest) WHERE digest IS NOT NULL;

-- Console sessions ended by signing out, refused (on every node) until their cookie would have
-- expired anyway (docs/architecture.md, "Console sessions"): kept by the SHA-256 of the
-- session's nonce, never the nonce itself.
CREATE TABLE console_sign_outs (
    nonce_hash  TEXT PRIMARY KEY,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX console_sign_outs_expiry ON console_sign_outs (expires_at);

-- Event streams open on each node, so the per-key stream quota holds across the cluster: a
-- node's streams vanish with its row (a clean stop, or the sweep of a dead node).
CREATE TABLE stream_leases (
    id        TEXT PRIMARY KEY,
    key_id    TEXT NOT NULL,
    node_id   TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    opened_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX stream_leases_key ON stream_leases (key_id);
CREATE INDEX stream_leases_node ON stream_leases (node_id);

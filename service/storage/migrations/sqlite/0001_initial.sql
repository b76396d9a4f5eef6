-- Times are Unix epoch seconds (REAL); JSON columns hold compact UTF-8 JSON text.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    owner_key_id      TEXT NOT NULL,
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    provider_job_id   TEXT,
    status            TEXT NOT NULL,
    input             TEXT NOT NULL,
    outputs           TEXT NOT NULL DEFAULT '[]',
    error             TEXT,
    cost              TEXT NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    idempotency_key   TEXT,
    request_hash      TEXT,
    created_at        REAL NOT NULL,
    submitted_at      REAL,
    completed_at      REAL,
    deadline_at       REAL NOT NULL,
    updated_at        REAL NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_model ON jobs (model, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner_key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX jobs_provider_job ON jobs (provider, provider_job_id)
    WHERE provider_job_id IS NOT NULL;

-- Every verified callback (or held Segmind answer), applied or not, for audit.
CREATE TABLE callbacks (
    id           INTEGER PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    provider     TEXT NOT NULL,
    received_at  REAL NOT NULL,
    outcome      TEXT NOT NULL,
    body         BLOB NOT NULL
);
CREATE INDEX callbacks_job ON callbacks (job_id);

-- The append-only event log; ``payload`` is the exact body sent to subscribers.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    job_id      TEXT,
    created_at  REAL NOT NULL,
    payload     BLOB NOT NULL
);
CREATE INDEX events_type ON events (type, seq);

CREATE TABLE subscriptions (
    id            TEXT PRIMARY KEY,
    owner_key_id  TEXT NOT NULL,
    url           TEXT NOT NULL,
    secret        TEXT NOT NULL,
    event_types   TEXT NOT NULL DEFAULT '[]',
    models        TEXT NOT NULL DEFAULT '[]',
    headers       TEXT NOT NULL DEFAULT '{}',
    description   TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL DEFAULT 'active',
    job_id        TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX subscriptions_job ON subscriptions (job_id);

-- The outbox: one row per (event, subscription); the dispatcher claims due rows under a lease.
CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    event_id          TEXT NOT NULL REFERENCES events (id),
    subscription_id   TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending',
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   REAL,
    lease_until       REAL,
    last_status_code  INTEGER,
    last_error        TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'inflight';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, status, id);

CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY,
    delivery_id    TEXT NOT NULL REFERENCES deliveries (id),
    attempted_at   REAL NOT NULL,
    status_code    INTEGER,
    latency_ms     REAL NOT NULL,
    error          TEXT,
    response_body  BLOB
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE blobs (
    digest       TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    media_type   TEXT NOT NULL,
    created_at   REAL NOT NULL
);

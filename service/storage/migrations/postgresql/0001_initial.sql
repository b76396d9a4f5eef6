-- The schema of SQLite migrations 0001-0005 in PostgreSQL terms (reelhook reached PostgreSQL
-- with that schema). Times are Unix epoch seconds (double precision, the database clock's
-- extract(epoch from clock_timestamp()) where the database decides); JSON columns hold compact
-- UTF-8 JSON text, as on SQLite, so both dialects share their SQL.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    revoked_at  DOUBLE PRECISION
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
    created_at        DOUBLE PRECISION NOT NULL,
    submitted_at      DOUBLE PRECISION,
    completed_at      DOUBLE PRECISION,
    deadline_at       DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    submit_attempts   INTEGER NOT NULL DEFAULT 0,
    next_submit_at    DOUBLE PRECISION,
    last_submit_error TEXT,
    held_resubmits    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_model ON jobs (model, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner_key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX jobs_provider_job ON jobs (provider, provider_job_id)
    WHERE provider_job_id IS NOT NULL;
CREATE INDEX jobs_submit_due ON jobs (next_submit_at) WHERE status = 'pending';
CREATE INDEX jobs_deadline ON jobs (status, deadline_at);

CREATE TABLE callbacks (
    id           BIGSERIAL PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    provider     TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    outcome      TEXT NOT NULL,
    body         BYTEA NOT NULL
);
CREATE INDEX callbacks_job ON callbacks (job_id);

CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    job_id      TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    payload     BYTEA NOT NULL
);
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_job ON events (job_id);

CREATE TABLE subscriptions (
    id                     TEXT PRIMARY KEY,
    owner_key_id           TEXT NOT NULL,
    url                    TEXT NOT NULL,
    secret                 TEXT NOT NULL,
    event_types            TEXT NOT NULL DEFAULT '[]',
    models                 TEXT NOT NULL DEFAULT '[]',
    headers                TEXT NOT NULL DEFAULT '{}',
    description            TEXT NOT NULL DEFAULT '',
    status                 TEXT NOT NULL DEFAULT 'active',
    job_id                 TEXT,
    created_at             DOUBLE PRECISION NOT NULL,
    updated_at             DOUBLE PRECISION NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  DOUBLE PRECISION,
    failing_since          DOUBLE PRECISION,
    disabled_reason        TEXT
);
CREATE INDEX subscriptions_job ON subscriptions (job_id);

CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    event_id          TEXT NOT NULL REFERENCES events (id),
    subscription_id   TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending',
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   DOUBLE PRECISION,
    lease_until       DOUBLE PRECISION,
    last_status_code  INTEGER,
    last_error        TEXT,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    manual            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'inflight';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, status, id);
CREATE INDEX deliveries_event ON deliveries (event_id);

CREATE TABLE attempts (
    id             BIGSERIAL PRIMARY KEY,
    delivery_id    TEXT NOT NULL REFERENCES deliveries (id),
    attempted_at   DOUBLE PRECISION NOT NULL,
    status_code    INTEGER,
    latency_ms     DOUBLE PRECISION NOT NULL,
    error          TEXT,
    response_body  BYTEA
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE blobs (
    digest       TEXT PRIMARY KEY,
    size         BIGINT NOT NULL,
    media_type   TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL
);

CREATE TABLE mirrors (
    job_id           TEXT NOT NULL REFERENCES jobs (id),
    output_index     INTEGER NOT NULL,
    url              TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  DOUBLE PRECISION NOT NULL,
    error            TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, output_index)
);
CREATE INDEX mirrors_due ON mirrors (next_attempt_at) WHERE status = 'pending';

CREATE TABLE readiness (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  DOUBLE PRECISION NOT NULL
);

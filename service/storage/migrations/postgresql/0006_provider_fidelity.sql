-- Issue 15 (the SQLite migration 0007_provider_fidelity): never lose a result a provider was
-- paid for.
ALTER TABLE jobs ADD COLUMN notices TEXT NOT NULL DEFAULT '[]';
-- 'job' (the per-job token URL), 'account' (the provider account's webhook) or 'held'.
ALTER TABLE callbacks ADD COLUMN route TEXT NOT NULL DEFAULT 'job';

-- Account-webhook documents that named no job reelhook knows yet, kept for audit.
CREATE TABLE unmatched_callbacks (
    id               BIGSERIAL PRIMARY KEY,
    provider         TEXT NOT NULL,
    provider_job_id  TEXT,
    received_at      DOUBLE PRECISION NOT NULL,
    reason           TEXT NOT NULL,
    body             BYTEA NOT NULL,
    matched_job_id   TEXT
);
CREATE INDEX unmatched_callbacks_job ON unmatched_callbacks (provider, provider_job_id)
    WHERE matched_job_id IS NULL;

-- Issue 15: never lose a result a provider was paid for.

-- What a job's status cannot say (unknown provider status words, unreadable callbacks, a success
-- after the job had ended): a JSON list of notices, shown on the job document.
ALTER TABLE jobs ADD COLUMN notices TEXT NOT NULL DEFAULT '[]';

-- Which route a stored callback came in by: 'job' (the per-job token URL), 'account' (the
-- provider account's webhook) or 'held' (Segmind's held answer).
ALTER TABLE callbacks ADD COLUMN route TEXT NOT NULL DEFAULT 'job';

-- Account-webhook documents that named no job reelhook knows yet (the provider's job id not yet
-- recorded and no external_task_id echoed), kept for audit; applied when the provider's job id
-- is recorded (``matched_job_id`` is then set).
CREATE TABLE unmatched_callbacks (
    id               INTEGER PRIMARY KEY,
    provider         TEXT NOT NULL,
    provider_job_id  TEXT,
    received_at      REAL NOT NULL,
    reason           TEXT NOT NULL,
    body             BLOB NOT NULL,
    matched_job_id   TEXT
);
CREATE INDEX unmatched_callbacks_job ON unmatched_callbacks (provider, provider_job_id)
    WHERE matched_job_id IS NULL;

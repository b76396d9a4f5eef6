-- The deadline timer asks for the earliest deadline of each unfinished status.
CREATE INDEX jobs_deadline ON jobs (status, deadline_at);

-- How many times a held (Segmind) request lost to a restart was sent again.
ALTER TABLE jobs ADD COLUMN held_resubmits INTEGER NOT NULL DEFAULT 0;

-- The durable download queue: one row per provider-hosted output of a succeeded job, copied
-- into the blob store before the job's event goes out. A row stays 'pending' until its download
-- is committed, so a restart resumes it; 'done' and 'failed' rows are history.
CREATE TABLE mirrors (
    job_id           TEXT NOT NULL REFERENCES jobs (id),
    output_index     INTEGER NOT NULL,
    url              TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    error            TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    PRIMARY KEY (job_id, output_index)
);
CREATE INDEX mirrors_due ON mirrors (next_attempt_at) WHERE status = 'pending';

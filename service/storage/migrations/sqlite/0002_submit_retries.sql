-- Durable submit retries: a pending job carries when its next provider submit is due (or, while an
-- attempt is in flight, when that attempt's lease runs out) and how many attempts were made.
ALTER TABLE jobs ADD COLUMN submit_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN next_submit_at REAL;
ALTER TABLE jobs ADD COLUMN last_submit_error TEXT;
-- A job left pending by an earlier version is due at once (its provider key makes it idempotent).
UPDATE jobs SET next_submit_at = created_at WHERE status = 'pending';
CREATE INDEX jobs_submit_due ON jobs (next_submit_at) WHERE status = 'pending';

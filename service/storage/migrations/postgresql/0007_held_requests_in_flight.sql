-- The SQLite migration 0008_held_requests_in_flight: a held request (Segmind) in flight has no
-- submit due (see storage/submissions.py).
UPDATE jobs SET next_submit_at = NULL
WHERE provider = 'segmind' AND status IN ('submitted', 'running');

CREATE INDEX jobs_resend_due ON jobs (provider, next_submit_at)
WHERE status = 'submitted' AND next_submit_at IS NOT NULL;

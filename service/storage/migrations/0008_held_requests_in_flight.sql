-- A held request (Segmind) in flight now has no submit due (see storage/submissions.py); before,
-- it kept its claim's lease and was the only way a submitted Segmind job could be. Clear it, so a
-- request lost to the stop before this upgrade is found as in flight, not sent a second time.
UPDATE jobs SET next_submit_at = NULL
WHERE provider = 'segmind' AND status IN ('submitted', 'running');

-- Held requests waiting to be sent again are submitted jobs with a submit due; the worker asks for
-- the earliest on every wake-up, so it must not scan every submitted job.
CREATE INDEX jobs_resend_due ON jobs (provider, next_submit_at)
WHERE status = 'submitted' AND next_submit_at IS NOT NULL;

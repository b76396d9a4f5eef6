-- The SQLite migration 0014_held_in_flight: Segmind's held requests in flight are found through
-- their own index instead of by reading every submitted job (docs/performance.md, "Memory").
CREATE INDEX jobs_held_in_flight ON jobs (provider, id)
WHERE provider = 'segmind' AND status IN ('submitted', 'running') AND next_submit_at IS NULL;

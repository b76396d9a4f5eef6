-- Held requests in flight (Segmind jobs submitted or running with no submit due) were found by
-- reading every submitted job: the leader's recovery sweep, every 10 s, read the whole jobs table
-- of a store holding 1,000,000 jobs waiting for their callbacks (and filled a connection's page
-- cache with it: docs/performance.md, "Memory"). Only Segmind rows are indexed, so no other job
-- pays for it.
CREATE INDEX jobs_held_in_flight ON jobs (provider, id)
WHERE provider = 'segmind' AND status IN ('submitted', 'running') AND next_submit_at IS NULL;

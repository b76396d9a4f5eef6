-- A key's own jobs, found without reading everyone's (docs/performance-journal.md, "A tenant's lists
-- read its own rows"): GET /v1/jobs for one key walked the whole table newest first until it
-- had a page, which for a key owning few of many jobs meant every row. An UPDATE of a job never
-- names owner_key_id, so callbacks write no entry here; a submit writes one.
CREATE INDEX jobs_owner ON jobs (owner_key_id, id);

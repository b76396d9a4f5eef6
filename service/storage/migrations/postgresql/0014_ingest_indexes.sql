-- Index entries an ingest batch no longer writes (docs/performance-journal.md, "The database
-- thread's share per callback"), as SQLite's 0016: each callback stored cost an entry in
-- callbacks_job and in callbacks_replay, and each job it finished an entry in jobs_deadline.
--
-- callbacks_job (job_id) repeated callbacks_replay's first column. The unique index now holds
-- every row, so it also finds a job's callbacks; rows stored before 0011 have no digest, and
-- NULLs are distinct in a unique index, so they still never conflict (and are never matched).
DROP INDEX callbacks_job;
DROP INDEX callbacks_replay;
CREATE UNIQUE INDEX callbacks_replay ON callbacks (job_id, digest);
-- Deadlines matter only until a job finishes: the deadline timer asks for unfinished jobs only
-- (storage/jobs.py, next_deadline and past_deadline: literals that imply this WHERE, so the
-- planner can prove the index applies), and a finished job no longer gets an entry.
DROP INDEX jobs_deadline;
CREATE INDEX jobs_deadline ON jobs (status, deadline_at)
    WHERE status = 'pending' OR status = 'submitted' OR status = 'running';

-- The node holding a Segmind job's synchronous request: only a dead node's held jobs are
-- recovered (ended interrupted, or sent once more), never a live node's (docs/scaling.md).
ALTER TABLE jobs ADD COLUMN held_by TEXT;

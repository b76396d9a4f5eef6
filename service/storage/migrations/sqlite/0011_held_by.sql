-- The node holding a Segmind job's synchronous request (one process on SQLite; on PostgreSQL it
-- decides whose held jobs a starting node may recover: docs/scaling.md).
ALTER TABLE jobs ADD COLUMN held_by TEXT;

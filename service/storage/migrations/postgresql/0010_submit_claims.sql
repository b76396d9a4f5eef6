-- The SQLite migration 0012_submit_claims: each submit claim carries a fencing token beside its
-- node (held_by now names the holder of any submit claim, a held Segmind request or a callback
-- provider's submit attempt); an attempt's outcome is written only under the current token
-- (docs/scaling.md).
ALTER TABLE jobs ADD COLUMN submit_token BIGINT;

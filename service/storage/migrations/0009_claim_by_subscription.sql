-- The claim reads each subscription's due deliveries from its own stretch of one index, so a
-- subscription with a million due rows that is already saturated is never walked (the old
-- ``deliveries_due`` index ordered every subscription's rows together, and a claim that skipped
-- a saturated subscription still read all of its rows). Same number of indexes per row as before.
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX deliveries_pending ON deliveries (subscription_id, next_attempt_at)
    WHERE status = 'pending';

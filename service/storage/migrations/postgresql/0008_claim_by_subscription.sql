-- The SQLite migration 0009_claim_by_subscription: the claim reads each subscription's due
-- deliveries from its own stretch of one index (docs/performance.md §3).
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX deliveries_pending ON deliveries (subscription_id, next_attempt_at)
    WHERE status = 'pending';

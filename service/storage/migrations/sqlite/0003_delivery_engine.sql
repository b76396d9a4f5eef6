-- The delivery engine: secret rotation, the failure window that disables a subscription, manual
-- resends, and the indexes the delivery log filters by.

-- The secret before the last rotation keeps signing until ``previous_secret_until``.
ALTER TABLE subscriptions ADD COLUMN previous_secret TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_secret_until REAL;
-- When the current run of failed attempts began (NULL after any success).
ALTER TABLE subscriptions ADD COLUMN failing_since REAL;
ALTER TABLE subscriptions ADD COLUMN disabled_reason TEXT;

-- 1 while a finished delivery is being resent by hand: a failed resend is not rescheduled.
ALTER TABLE deliveries ADD COLUMN manual INTEGER NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);

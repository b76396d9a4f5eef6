-- Issue 19 (the SQLite migration 0006_delivery_features): payload filters, body templates,
-- ordered (FIFO) delivery.
ALTER TABLE subscriptions ADD COLUMN filter TEXT;
ALTER TABLE subscriptions ADD COLUMN template TEXT;
ALTER TABLE subscriptions ADD COLUMN content_type TEXT NOT NULL DEFAULT 'application/json';
-- 'none' or 'fifo': at most one delivery in flight, each after the previous is finished.
ALTER TABLE subscriptions ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';

-- A FIFO subscription's deliveries behind its head wait as 'queued', in event order.
ALTER TABLE deliveries ADD COLUMN queue_seq BIGINT;
CREATE INDEX deliveries_queue ON deliveries (subscription_id, queue_seq) WHERE status = 'queued';

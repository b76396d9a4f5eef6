-- Issue 19: payload filters, body templates, ordered (FIFO) delivery. The signature scheme needs no
-- column: it follows the secret's prefix (whsec_ is v1, whsk_ is v1a), so rotation keeps working.

-- A payload filter (JSON, service/delivery/filters.py); NULL delivers every matching event.
ALTER TABLE subscriptions ADD COLUMN filter TEXT;
-- A body template (Jinja2, service/delivery/transform.py) and the content type it produces; with
-- no template the event body is sent as JSON.
ALTER TABLE subscriptions ADD COLUMN template TEXT;
ALTER TABLE subscriptions ADD COLUMN content_type TEXT NOT NULL DEFAULT 'application/json';
-- 'none' or 'fifo': at most one delivery in flight, each after the previous is finished.
ALTER TABLE subscriptions ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';

-- A FIFO subscription's deliveries behind its head wait as 'queued', in event order (the event's
-- seq, stable across VACUUM unlike a rowid); finishing the head promotes the first of them.
ALTER TABLE deliveries ADD COLUMN queue_seq INTEGER;
CREATE INDEX deliveries_queue ON deliveries (subscription_id, queue_seq) WHERE status = 'queued';

-- Deferred fan-out (docs/architecture.md, "A delivery"): an event matching many subscriptions
-- is stored with ONE row here instead of one delivery row per subscription; the dispatcher of
-- any node expands it into ordinary delivery rows in bounded background steps, oldest first
-- (``seq``), taking rows with FOR UPDATE SKIP LOCKED so each is expanded by one node at a time.
-- ``subscription_ids`` are the matched subscriptions' ids, each padded with spaces to ``width``
-- characters (so a step reads only its slice with substr); ``expanded`` of ``total`` have their
-- delivery rows already. The row is deleted once expanded.
CREATE TABLE event_fanouts (
    seq               BIGSERIAL PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE REFERENCES events (id),
    subscription_ids  TEXT NOT NULL,
    width             INTEGER NOT NULL,
    total             INTEGER NOT NULL,
    expanded          INTEGER NOT NULL DEFAULT 0,
    first_attempt_at  DOUBLE PRECISION NOT NULL,
    created_at        DOUBLE PRECISION NOT NULL
);

-- Retention deletes each pruned event's deliveries; find them without scanning the outbox.
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);

-- /readyz proves the database takes a write by updating this single row.
CREATE TABLE readiness (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  REAL NOT NULL
);

-- Work announcements move from triggers into the storage functions (announce(), notified just
-- before COMMIT: service/storage/announcements.py), as on SQLite; the triggers would double them.
DROP TRIGGER announce_events ON events;
DROP TRIGGER announce_new_deliveries ON deliveries;
DROP TRIGGER announce_due_deliveries ON deliveries;
DROP TRIGGER announce_active_subscriptions ON subscriptions;
DROP TRIGGER announce_deadlines ON jobs;
DROP TRIGGER announce_submits ON jobs;
DROP TRIGGER announce_mirrors ON mirrors;
DROP FUNCTION reelhook_announce();

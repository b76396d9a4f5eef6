-- Work announcements (service/storage/announcements.py): each change that creates work notifies
-- its kind on the reelhook_work channel. PostgreSQL delivers notifications only once (and if) the
-- transaction commits, and to every listening node, this one included; identical notifications
-- of one transaction are folded into one. The conditions mirror SQLite's temporary triggers.
CREATE FUNCTION reelhook_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reelhook_work', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER announce_events AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION reelhook_announce('events');
CREATE TRIGGER announce_new_deliveries AFTER INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION reelhook_announce('deliveries');
CREATE TRIGGER announce_due_deliveries AFTER UPDATE OF status, next_attempt_at ON deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION reelhook_announce('deliveries');
CREATE TRIGGER announce_active_subscriptions AFTER UPDATE OF status ON subscriptions
    FOR EACH ROW WHEN (NEW.status = 'active' AND OLD.status <> 'active')
    EXECUTE FUNCTION reelhook_announce('deliveries');
CREATE TRIGGER announce_deadlines AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION reelhook_announce('deadlines');
CREATE TRIGGER announce_submits AFTER UPDATE OF next_submit_at ON jobs
    FOR EACH ROW WHEN (NEW.next_submit_at IS NOT NULL
        AND (OLD.next_submit_at IS NULL OR NEW.next_submit_at < OLD.next_submit_at))
    EXECUTE FUNCTION reelhook_announce('submits');
CREATE TRIGGER announce_mirrors AFTER INSERT ON mirrors
    FOR EACH STATEMENT EXECUTE FUNCTION reelhook_announce('mirrors');

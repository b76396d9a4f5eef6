-- A delivery's index entries no longer name its status where they need not (docs/performance.md
-- §5, "A delivery's index entries without its status"). deliveries_subscription held
-- (subscription_id, status, id), so each claim (pending -> inflight) and each outcome
-- (inflight -> succeeded) deleted and reinserted the row's entry; deliveries_lease was written at
-- each claim and each outcome, and no query reads lease_until.
--
-- Now a delivery writes its entry here once, at insert (deliveries_subscription in id order: a
-- subscription's list newest first a page at a time, which the old index had to sort whole), and
-- one entry in deliveries_inflight while it is claimed. A list of one subscription's deliveries
-- in flight or failed reads that status's partial index; in another status it reads the
-- subscription's rows newest first until its page is full (pending and queued rows are its
-- newest; succeeded ones are the most of the rest). A partial index of succeeded rows cost
-- about what was saved (the §5 subsection). The counts of a subscription's rows in flight
-- (PostgreSQL's claim) and the checks of a FIFO queue read the partial index of each status
-- (storage/deliveries.py, storage/subscriptions.py: each status a literal, which is how SQLite
-- knows it may use a partial index).
DROP INDEX deliveries_subscription;
DROP INDEX deliveries_lease;
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_inflight ON deliveries (subscription_id, id) WHERE status = 'inflight';
CREATE INDEX deliveries_failed ON deliveries (subscription_id, id) WHERE status = 'failed';

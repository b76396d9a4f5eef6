-- Each claim of a delivery carries a fencing token and its node: an outcome is recorded only
-- under the token of the claim that is still current (docs/scaling.md). On SQLite one process
-- owns the file, so the owner is informational; on PostgreSQL it decides whose leases a stale
-- node sweep hands back.
ALTER TABLE deliveries ADD COLUMN claim_token INTEGER;
ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;

-- herald's SQLite schema, version 2: every claim of leased work carries a
-- token, and writes made under a lease name it, so that a worker whose lease
-- ran out cannot write over the worker that took the work up after it.
ALTER TABLE dispatch_jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE callbacks ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;

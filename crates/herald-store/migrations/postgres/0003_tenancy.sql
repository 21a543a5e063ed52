-- herald's PostgreSQL schema, version 3 (version 4 of the SQLite schema):
-- what one account may not take from another.

-- Open sessions by the agent number they use, then the person: where an
-- inbound message goes (number and person), and whether a number is still
-- held by open sessions (number alone), in one index instead of two.
DROP INDEX sessions_open;
CREATE INDEX sessions_open ON sessions(channel, from_number, to_addr, id)
    WHERE status <> 'ended';

-- Each dispatch job names its session's account, so that a claim can pass
-- over accounts that already have their share of a server's places.
ALTER TABLE dispatch_jobs ADD COLUMN account_id BIGINT NOT NULL DEFAULT 0;
UPDATE dispatch_jobs j SET account_id = s.account_id FROM sessions s WHERE s.id = j.session_id;

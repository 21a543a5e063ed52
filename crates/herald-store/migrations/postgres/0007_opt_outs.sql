-- herald's PostgreSQL schema, version 7 (version 8 of the SQLite schema):
-- opt-outs (CONTRACT §13).

-- The recipients an account must not contact, per channel: added through
-- the API, by the person's own keyword (STOP and the others) or by a flow's
-- opt_out node (`source`), with the session that heard it if one did.
CREATE TABLE opt_outs (
    account_id BIGINT NOT NULL,
    channel    TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    source     TEXT NOT NULL,
    session_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, channel, recipient)
);

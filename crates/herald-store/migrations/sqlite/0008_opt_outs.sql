-- herald's SQLite schema, version 8: opt-outs (CONTRACT §13).

-- The recipients an account must not contact, per channel: added through
-- the API, by the person's own keyword (STOP and the others) or by a flow's
-- opt_out node (`source`), with the session that heard it if one did.
CREATE TABLE opt_outs (
    account_id INTEGER NOT NULL,
    channel    TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    source     TEXT NOT NULL,
    session_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, channel, recipient)
) WITHOUT ROWID;

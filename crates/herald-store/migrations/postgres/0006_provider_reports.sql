-- herald's PostgreSQL schema, version 6 (version 7 of the SQLite schema):
-- what providers report of messages and calls.

-- A provider delivers a report more than once; each input it causes may
-- carry a key (the provider's id and what it reports), and a second input
-- with the key of one already stored is the first one.
ALTER TABLE session_inputs ADD COLUMN dedupe TEXT;
CREATE UNIQUE INDEX session_inputs_dedupe ON session_inputs(session_id, dedupe)
    WHERE dedupe IS NOT NULL;

-- The provider's own id of each message or call a session made through a
-- connection (`item` names it within the session: "3", the session's fourth
-- message to the person), so that a report finds its session in one lookup,
-- and a run of a session that stopped part-way finds what was already sent.
CREATE TABLE provider_refs (
    connection_id TEXT NOT NULL,
    provider_ref  TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    item          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (connection_id, provider_ref)
);
CREATE UNIQUE INDEX provider_refs_item ON provider_refs(session_id, item);

-- herald's PostgreSQL schema, version 5 (version 6 of the SQLite schema):
-- connections to channel providers (CONTRACT §10).

-- An account's credentials and settings for one provider. The credentials
-- are sealed with the operator's key (HERALD_SECRET_KEY) before they reach
-- this table; herald never stores them in the clear. Deleting a connection
-- keeps its row, as deleting an agent does, so that sessions already under
-- way on it can finish; the API no longer shows it.
CREATE TABLE connections (
    id          TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id),
    name        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    settings    TEXT NOT NULL,
    credentials BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE INDEX connections_account ON connections(account_id);

-- The connection an agent's draft and each published version run on;
-- NULL is the simulator.
ALTER TABLE agents ADD COLUMN connection_id TEXT REFERENCES connections(id);
ALTER TABLE agent_versions ADD COLUMN connection_id TEXT REFERENCES connections(id);
CREATE INDEX agents_connection ON agents(connection_id) WHERE connection_id IS NOT NULL;

INSERT INTO revisions (kind, rev) VALUES ('connections', 0);

-- herald's SQLite schema, version 1.
-- Times are microseconds since the Unix epoch (UTC).

CREATE TABLE accounts (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    webhook_secret TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

-- Keys are stored only as SHA-256 hashes (CONTRACT §1.3).
CREATE TABLE api_keys (
    hash       BLOB PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;

-- The draft of each agent. Deleting an agent keeps its row (and versions) so
-- that sessions already started can finish; the API no longer shows it.
CREATE TABLE agents (
    agent_id        TEXT PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts(id),
    name            TEXT NOT NULL,
    channel         TEXT NOT NULL,
    number          TEXT NOT NULL,
    region          TEXT NOT NULL,
    flow            TEXT NOT NULL,
    current_version INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    deleted_at      INTEGER
) WITHOUT ROWID;
-- A number belongs to one live agent of a type in a region (CONTRACT §4.2).
CREATE UNIQUE INDEX agents_number ON agents(channel, region, number) WHERE deleted_at IS NULL;
CREATE INDEX agents_account ON agents(account_id);

-- Published versions: immutable snapshots of a draft (CONTRACT §4.3).
CREATE TABLE agent_versions (
    agent_id     TEXT NOT NULL REFERENCES agents(agent_id),
    version      INTEGER NOT NULL,
    name         TEXT NOT NULL,
    channel      TEXT NOT NULL,
    number       TEXT NOT NULL,
    region       TEXT NOT NULL,
    flow         TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (agent_id, version)
) WITHOUT ROWID;

CREATE TABLE agent_limits (
    agent_id TEXT PRIMARY KEY,
    rate     INTEGER NOT NULL CHECK (rate > 0)
) WITHOUT ROWID;

CREATE TABLE whatsapp_templates (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    locale     TEXT NOT NULL,
    header     TEXT,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, namespace, name, locale)
) WITHOUT ROWID;

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    account_id        INTEGER NOT NULL,
    agent_id          TEXT NOT NULL,
    agent_version     INTEGER NOT NULL,
    channel           TEXT NOT NULL,
    to_addr           TEXT NOT NULL,
    from_number       TEXT NOT NULL,
    status            TEXT NOT NULL,
    outcome           TEXT,
    status_url        TEXT,
    hangup_on_machine INTEGER NOT NULL,
    parameters        TEXT NOT NULL,
    whatsapp          TEXT,
    conversation_uuid TEXT,
    created_at        INTEGER NOT NULL,
    ended_at          INTEGER
) WITHOUT ROWID;
-- Session ids are UUID v7, so id order is creation order.
CREATE INDEX sessions_account ON sessions(account_id, id);
CREATE INDEX sessions_agent ON sessions(agent_id, id);

-- What happened in a session, in order. `key` makes a worker's re-run of the
-- same step (after a crash) a no-op instead of a duplicate.
CREATE TABLE session_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    key        TEXT,
    type       TEXT NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT,
    UNIQUE (session_id, key)
);

-- Sessions waiting to be dispatched. A worker leases a job until
-- `lease_until`; a job whose lease ran out is taken again.
CREATE TABLE dispatch_jobs (
    session_id  TEXT PRIMARY KEY,
    run_at      INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX dispatch_jobs_due ON dispatch_jobs(run_at);

-- The callback outbox (CONTRACT §5.4). `webhook_id` is fixed when the row is
-- written, so every attempt carries the same one.
CREATE TABLE callbacks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      TEXT NOT NULL UNIQUE,
    session_id      TEXT NOT NULL,
    account_id      INTEGER NOT NULL,
    dedupe_key      TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    settled_at      INTEGER,
    UNIQUE (session_id, dedupe_key)
);
CREATE INDEX callbacks_due ON callbacks(next_attempt_at) WHERE state = 'pending';
CREATE INDEX callbacks_session ON callbacks(session_id, id) WHERE state = 'pending';

-- Idempotency keys (CONTRACT §2.4): the first response, kept 24 hours.
CREATE TABLE idempotency_keys (
    account_id   INTEGER NOT NULL,
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
) WITHOUT ROWID;

-- Counters bumped with every change to what servers cache (keys, agents,
-- limits), so that every server process notices a change made by another
-- (or by the `herald keys` and `herald limits` commands) within a poll.
CREATE TABLE revisions (
    kind TEXT PRIMARY KEY,
    rev  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO revisions (kind, rev) VALUES ('keys', 0), ('agents', 0), ('limits', 0);

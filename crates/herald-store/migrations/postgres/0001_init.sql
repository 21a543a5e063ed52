-- herald's PostgreSQL schema, version 1: the tables of the SQLite schema
-- (versions 1 and 2 there), with the same names.
-- Times are microseconds since the Unix epoch (UTC), as BIGINT.
-- Ids and template names sort byte-wise (COLLATE "C"), as in SQLite, whatever
-- the database's locale: session ids page by id order.

CREATE TABLE accounts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    webhook_secret TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- Keys are stored only as SHA-256 hashes (CONTRACT §1.3).
CREATE TABLE api_keys (
    hash       BYTEA PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- The draft of each agent. Deleting an agent keeps its row (and versions) so
-- that sessions already started can finish; the API no longer shows it.
CREATE TABLE agents (
    agent_id        TEXT COLLATE "C" PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts(id),
    name            TEXT NOT NULL,
    channel         TEXT NOT NULL,
    number          TEXT NOT NULL,
    region          TEXT NOT NULL,
    flow            TEXT NOT NULL,
    current_version BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    deleted_at      BIGINT
);
-- A number belongs to one live agent of a type in a region (CONTRACT §4.2).
CREATE UNIQUE INDEX agents_number ON agents(channel, region, number) WHERE deleted_at IS NULL;
CREATE INDEX agents_account ON agents(account_id);

-- Published versions: immutable snapshots of a draft (CONTRACT §4.3).
CREATE TABLE agent_versions (
    agent_id     TEXT COLLATE "C" NOT NULL REFERENCES agents(agent_id),
    version      BIGINT NOT NULL,
    name         TEXT NOT NULL,
    channel      TEXT NOT NULL,
    number       TEXT NOT NULL,
    region       TEXT NOT NULL,
    flow         TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, version)
);

CREATE TABLE agent_limits (
    agent_id TEXT COLLATE "C" PRIMARY KEY,
    rate     BIGINT NOT NULL CHECK (rate > 0)
);

CREATE TABLE whatsapp_templates (
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    locale     TEXT COLLATE "C" NOT NULL,
    header     TEXT,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, namespace, name, locale)
);

CREATE TABLE sessions (
    id                TEXT COLLATE "C" PRIMARY KEY,
    account_id        BIGINT NOT NULL,
    agent_id          TEXT COLLATE "C" NOT NULL,
    agent_version     BIGINT NOT NULL,
    channel           TEXT NOT NULL,
    to_addr           TEXT NOT NULL,
    from_number       TEXT NOT NULL,
    status            TEXT NOT NULL,
    outcome           TEXT,
    status_url        TEXT,
    hangup_on_machine BOOLEAN NOT NULL,
    parameters        TEXT NOT NULL,
    whatsapp          TEXT,
    conversation_uuid TEXT,
    created_at        BIGINT NOT NULL,
    ended_at          BIGINT
);
-- Session ids are UUID v7, so id order is creation order.
CREATE INDEX sessions_account ON sessions(account_id, id);
CREATE INDEX sessions_agent ON sessions(agent_id, id);

-- What happened in a session, in order. `key` makes a worker's re-run of the
-- same step (after a crash) a no-op instead of a duplicate.
CREATE TABLE session_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT COLLATE "C" NOT NULL,
    key        TEXT,
    type       TEXT NOT NULL,
    at         BIGINT NOT NULL,
    data       TEXT,
    UNIQUE (session_id, key)
);

-- Sessions waiting to be dispatched. A worker leases a job until
-- `lease_until` under a fresh `lease_token`; a job whose lease ran out is
-- taken again, and writes made under the old token are refused.
CREATE TABLE dispatch_jobs (
    session_id  TEXT COLLATE "C" PRIMARY KEY,
    run_at      BIGINT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    attempts    BIGINT NOT NULL DEFAULT 0,
    lease_token BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX dispatch_jobs_due ON dispatch_jobs(run_at);

-- The callback outbox (CONTRACT §5.4). `webhook_id` is fixed when the row is
-- written, so every attempt carries the same one.
CREATE TABLE callbacks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      TEXT NOT NULL UNIQUE,
    session_id      TEXT COLLATE "C" NOT NULL,
    account_id      BIGINT NOT NULL,
    dedupe_key      TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    lease_token     BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    settled_at      BIGINT,
    UNIQUE (session_id, dedupe_key)
);
CREATE INDEX callbacks_due ON callbacks(next_attempt_at) WHERE state = 'pending';
CREATE INDEX callbacks_session ON callbacks(session_id, id) WHERE state = 'pending';

-- Idempotency keys (CONTRACT §2.4): the first response, kept 24 hours.
CREATE TABLE idempotency_keys (
    account_id   BIGINT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    response     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (account_id, key)
);

-- Counters bumped with every change to what servers cache (keys, agents,
-- limits), so that every server process notices a change made by another
-- (or by the `herald keys` and `herald limits` commands) within a poll.
CREATE TABLE revisions (
    kind TEXT PRIMARY KEY,
    rev  BIGINT NOT NULL
);
INSERT INTO revisions (kind, rev) VALUES ('keys', 0), ('agents', 0), ('limits', 0);

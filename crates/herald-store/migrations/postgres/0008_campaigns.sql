-- herald's PostgreSQL schema, version 8 (version 9 of the SQLite schema):
-- campaigns (CONTRACT §12).

-- A campaign: an agent, the people it is to reach, and how (its schedule,
-- window, pace, retries and WhatsApp template, kept as the JSON it was
-- created with, checked). `state`: draft, scheduled, running, paused,
-- completed, cancelled.
CREATE TABLE campaigns (
    id          TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL,
    name        TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    status_url  TEXT,
    settings    TEXT NOT NULL,
    state       TEXT NOT NULL,
    recipients  BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    ended_at    BIGINT
);
CREATE INDEX campaigns_account ON campaigns(account_id, created_at);
CREATE INDEX campaigns_state ON campaigns(state);

-- Each recipient of a campaign, numbered in the order it was added (`n`).
-- `state`: pending, waiting (for its window or a retry, until `next_at`),
-- in_progress (its attempt's session, `session_id`, is under way),
-- completed, failed (its last attempt's outcome was not retried), skipped
-- (`skip_reason`), expired, cancelled. `attempts` counts the sessions
-- started for it; the one that starts attempt k moves it from k-1 to k in
-- the same transaction, so no attempt is made twice.
CREATE TABLE campaign_recipients (
    campaign_id  TEXT NOT NULL,
    n            BIGINT NOT NULL,
    recipient    TEXT NOT NULL,
    external_id  TEXT,
    timezone     TEXT,
    zone_source  TEXT NOT NULL,
    parameters   TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT,
    session_id   TEXT,
    last_outcome TEXT,
    skip_reason  TEXT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, n)
);
CREATE UNIQUE INDEX campaign_recipients_to ON campaign_recipients(campaign_id, recipient);
CREATE UNIQUE INDEX campaign_recipients_id ON campaign_recipients(campaign_id, external_id)
    WHERE external_id IS NOT NULL;
-- What the scheduler reads on every pass, however many recipients are done:
-- those not yet tried in their order, those waiting by when they are due,
-- and those under way.
CREATE INDEX campaign_recipients_pending ON campaign_recipients(campaign_id, n)
    WHERE state = 'pending';
CREATE INDEX campaign_recipients_waiting ON campaign_recipients(campaign_id, next_at)
    WHERE state = 'waiting';
CREATE INDEX campaign_recipients_under_way ON campaign_recipients(campaign_id)
    WHERE state = 'in_progress';

-- The campaign a session is an attempt of, if any.
ALTER TABLE sessions ADD COLUMN campaign_id TEXT;
CREATE INDEX sessions_campaign ON sessions(account_id, campaign_id, id)
    WHERE campaign_id IS NOT NULL;

-- herald's SQLite schema, version 3: conversations that wait.
-- A session that is not over keeps its dispatch job; `run_at` is when it next
-- needs a worker (now for a new session or a new input, the next timer
-- deadline for one that waits). What the person says arrives as inputs.

-- Started by the person's message rather than by a trigger.
ALTER TABLE sessions ADD COLUMN inbound INTEGER NOT NULL DEFAULT 0;
-- The flow runtime's state as of the last step (opaque JSON), NULL before
-- the first step.
ALTER TABLE sessions ADD COLUMN flow_state TEXT;
-- The highest input id the session's steps have handled.
ALTER TABLE sessions ADD COLUMN inputs_consumed INTEGER NOT NULL DEFAULT 0;

-- The newest session that is not over, between a person and an agent
-- number, for each channel: where an inbound message goes.
CREATE INDEX sessions_open ON sessions(channel, to_addr, from_number, id)
    WHERE status <> 'ended';

-- What the person (or a live agent) said to an open session. Ids grow in
-- arrival order (AUTOINCREMENT: never reused, even after a delete).
CREATE TABLE session_inputs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    text       TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX session_inputs_session ON session_inputs(session_id, id);

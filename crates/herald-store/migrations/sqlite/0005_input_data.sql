-- herald's SQLite schema, version 5: what an input carries beyond its
-- words (a recogniser's confidence, a call's progress, a message's
-- status), as JSON; NULL for the inputs of earlier versions, which carry
-- words alone.
ALTER TABLE session_inputs ADD COLUMN data TEXT;

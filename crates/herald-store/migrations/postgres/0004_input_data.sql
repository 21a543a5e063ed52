-- herald's PostgreSQL schema, version 4 (version 5 of the SQLite schema):
-- what an input carries beyond its words (a recogniser's confidence, a
-- call's progress, a message's status), as JSON text; NULL for the inputs
-- of earlier versions, which carry words alone.
ALTER TABLE session_inputs ADD COLUMN data TEXT;

-- Agents paused by the operator: no turns while paused; their inboxes keep filling. Keyed by the
-- incarnation, so a name spawned again after a destroy starts unpaused and a restore keeps it.
CREATE TABLE paused (
    incarnation INTEGER PRIMARY KEY,
    paused_at   INTEGER NOT NULL,
    by          TEXT NOT NULL
) STRICT;

-- The watcher's memory (DESIGN §9): per agent incarnation and axis, the last state it recorded
-- (seeded silently on a first look, or told to the manager as a helper event). A state equal to
-- the one stored is never told again, across restarts; a different one is a change (also one
-- that happened while the daemon was down).
CREATE TABLE events_sent (
    incarnation  INTEGER NOT NULL,
    agent        TEXT NOT NULL,
    axis         TEXT NOT NULL,
    state        TEXT NOT NULL,
    -- The helper event that told this state (NULL: seeded, nothing sent) and its message.
    event        TEXT,
    message_id   INTEGER,
    at           INTEGER NOT NULL,
    PRIMARY KEY (incarnation, axis)
) STRICT;

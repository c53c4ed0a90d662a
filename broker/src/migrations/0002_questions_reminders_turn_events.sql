-- Questions to the operator, reminders, and the event stream of harness turns (DESIGN §10, §11).

CREATE TABLE questions (
    id                INTEGER PRIMARY KEY,
    asker             TEXT NOT NULL,
    -- Who must answer: `operator` now; an agent name once agents answer each other.
    target            TEXT NOT NULL DEFAULT 'operator',
    question          TEXT NOT NULL,
    -- JSON list of strings; empty = a free-text answer.
    options           TEXT NOT NULL DEFAULT '[]',
    multi             INTEGER NOT NULL DEFAULT 0,
    -- The message that put the question in the target's inbox; answers reply to it.
    message_id        INTEGER NOT NULL,
    asked_at          INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    status            TEXT NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'answered', 'expired')),
    answer            TEXT,
    resolved_at       INTEGER,
    -- The message that carried the answer (or the expiry) back to the asker.
    reply_message_id  INTEGER
) STRICT;

CREATE INDEX questions_open ON questions (expires_at) WHERE status = 'open';
CREATE INDEX questions_by_asker ON questions (asker, id);

CREATE TABLE reminders (
    id          INTEGER PRIMARY KEY,
    agent       TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    due_at      INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered')),
    message_id  INTEGER
) STRICT;

CREATE INDEX reminders_pending ON reminders (due_at) WHERE status = 'pending';
CREATE INDEX reminders_by_agent ON reminders (agent) WHERE status = 'pending';

CREATE TABLE turn_events (
    turn  INTEGER NOT NULL,
    seq   INTEGER NOT NULL,
    at    INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    data  TEXT NOT NULL,
    PRIMARY KEY (turn, seq)
) STRICT;

-- The core: agents and the mailbox (DESIGN §5, §6). Timestamps are Unix milliseconds.

CREATE TABLE agents (
    name               TEXT PRIMARY KEY NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('manager', 'agent')),
    created_at         INTEGER NOT NULL,
    -- JSON list of names; empty = unrestricted (DESIGN §6). Set from the applied config.
    allowed_recipients TEXT NOT NULL DEFAULT '[]'
) STRICT;

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,
    sender       TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    body         TEXT NOT NULL,
    in_reply_to  INTEGER,
    sent_at      INTEGER NOT NULL,
    state        TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'leased', 'delivered')),
    delivered_at INTEGER,
    lease_turn   INTEGER,
    redelivered  INTEGER NOT NULL DEFAULT 0
) STRICT;

-- An inbox's queue, oldest first.
CREATE INDEX messages_queued ON messages (recipient, id) WHERE state = 'queued';
CREATE INDEX messages_leased ON messages (recipient) WHERE state = 'leased';
-- The message flow of one agent, either direction.
CREATE INDEX messages_by_sender ON messages (sender, id);
CREATE INDEX messages_by_recipient ON messages (recipient, id);
-- The retention vacuum.
CREATE INDEX messages_delivered ON messages (delivered_at) WHERE state = 'delivered';

-- One harness turn: the message it was leased for and how it ended.
CREATE TABLE turns (
    id          INTEGER PRIMARY KEY,
    agent       TEXT NOT NULL,
    message_id  INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT,
    usage       TEXT
) STRICT;

CREATE INDEX turns_by_agent ON turns (agent, id);

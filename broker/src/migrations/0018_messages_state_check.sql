-- The state CHECK of `messages` said `state IN ('queued', 'leased', 'delivered')`. SQLite checks
-- an IN list of more than two constants against a temporary b-tree it builds from the list, and in
-- a CHECK constraint it builds it again for every row checked: at every INSERT of a message and
-- every change of its state, about half the writer's cost of storing a send. The same rule
-- written as comparisons is three string compares. SQLite cannot change a CHECK in place: the
-- table is rebuilt with the same rows (ids, states and `message_counts` unchanged): ~3 s for a
-- million messages; the old table's pages stay in the file as free pages, which the next messages
-- reuse (as after a retention vacuum).

CREATE TABLE messages_new (
    id           INTEGER PRIMARY KEY,
    sender       TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    body         TEXT NOT NULL,
    in_reply_to  INTEGER,
    sent_at      INTEGER NOT NULL,
    state        TEXT NOT NULL DEFAULT 'queued'
                 CHECK (state = 'queued' OR state = 'leased' OR state = 'delivered'),
    delivered_at INTEGER,
    lease_turn   INTEGER,
    redelivered  INTEGER NOT NULL DEFAULT 0,
    incarnation  INTEGER,
    broadcast    INTEGER NOT NULL DEFAULT 0,
    leased_at    INTEGER
) STRICT;

INSERT INTO messages_new (id, sender, recipient, body, in_reply_to, sent_at, state, delivered_at,
                          lease_turn, redelivered, incarnation, broadcast, leased_at)
    SELECT id, sender, recipient, body, in_reply_to, sent_at, state, delivered_at, lease_turn,
           redelivered, incarnation, broadcast, leased_at
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;

-- An inbox's queue, oldest first.
CREATE INDEX messages_queued ON messages (recipient, id) WHERE state = 'queued';
CREATE INDEX messages_leased ON messages (recipient) WHERE state = 'leased';
-- The message flow of one inbox.
CREATE INDEX messages_by_recipient ON messages (recipient, id);
-- The retention vacuum.
CREATE INDEX messages_delivered ON messages (delivered_at) WHERE state = 'delivered';

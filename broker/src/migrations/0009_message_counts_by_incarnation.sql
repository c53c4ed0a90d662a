-- Message counts keyed by the recipient's incarnation too (0 for the operator's inbox): the queued
-- mail a destroyed agent keeps for a restore must not count against the inbox quota of a new agent
-- of the same name. Same triggers as 0006, with the incarnation in the key.

DROP TRIGGER message_counts_insert;
DROP TRIGGER message_counts_delete;
DROP TRIGGER message_counts_update;
DROP TABLE message_counts;

CREATE TABLE message_counts (
    recipient   TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (recipient, incarnation, state)
) STRICT, WITHOUT ROWID;

INSERT INTO message_counts (recipient, incarnation, state, n)
    SELECT recipient, coalesce(incarnation, 0), state, count(*) FROM messages
    GROUP BY recipient, coalesce(incarnation, 0), state;

CREATE TRIGGER message_counts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_counts (recipient, incarnation, state, n)
        VALUES (NEW.recipient, coalesce(NEW.incarnation, 0), NEW.state, 1)
        ON CONFLICT (recipient, incarnation, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER message_counts_delete AFTER DELETE ON messages BEGIN
    UPDATE message_counts SET n = n - 1
        WHERE recipient = OLD.recipient AND incarnation = coalesce(OLD.incarnation, 0)
          AND state = OLD.state;
END;

CREATE TRIGGER message_counts_update AFTER UPDATE OF recipient, incarnation, state ON messages
    WHEN OLD.recipient IS NOT NEW.recipient OR OLD.incarnation IS NOT NEW.incarnation
      OR OLD.state IS NOT NEW.state
BEGIN
    UPDATE message_counts SET n = n - 1
        WHERE recipient = OLD.recipient AND incarnation = coalesce(OLD.incarnation, 0)
          AND state = OLD.state;
    INSERT INTO message_counts (recipient, incarnation, state, n)
        VALUES (NEW.recipient, coalesce(NEW.incarnation, 0), NEW.state, 1)
        ON CONFLICT (recipient, incarnation, state) DO UPDATE SET n = n + 1;
END;

-- The open-questions quota counts an asker's open questions through this index (bounded by the
-- quota), not through every question it ever asked; keyed by incarnation like the inbox quota.
CREATE INDEX questions_open_by_asker ON questions (asker, incarnation) WHERE status = 'open';

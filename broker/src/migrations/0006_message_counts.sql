-- Message counts per (inbox, state), kept by triggers in the same transaction as every change to
-- `messages`, so `hive status` (and a quota check) read a few rows instead of counting the table.
-- A migration that rebuilds `messages` drops these triggers with it and must create them again.

CREATE TABLE message_counts (
    recipient TEXT NOT NULL,
    state     TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (recipient, state)
) STRICT, WITHOUT ROWID;

INSERT INTO message_counts (recipient, state, n)
    SELECT recipient, state, count(*) FROM messages GROUP BY recipient, state;

CREATE TRIGGER message_counts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_counts (recipient, state, n) VALUES (NEW.recipient, NEW.state, 1)
        ON CONFLICT (recipient, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER message_counts_delete AFTER DELETE ON messages BEGIN
    UPDATE message_counts SET n = n - 1 WHERE recipient = OLD.recipient AND state = OLD.state;
END;

CREATE TRIGGER message_counts_update AFTER UPDATE OF recipient, state ON messages
    WHEN OLD.recipient IS NOT NEW.recipient OR OLD.state IS NOT NEW.state
BEGIN
    UPDATE message_counts SET n = n - 1 WHERE recipient = OLD.recipient AND state = OLD.state;
    INSERT INTO message_counts (recipient, state, n) VALUES (NEW.recipient, NEW.state, 1)
        ON CONFLICT (recipient, state) DO UPDATE SET n = n + 1;
END;

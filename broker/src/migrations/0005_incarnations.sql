-- Incarnations (DESIGN §7): one id per spawn of a name, so a name used again inherits nothing of
-- the agent that had it before. Rows that belong to an agent carry the incarnation they belong to;
-- what a destroyed incarnation left (queued mail, pending reminders, open questions) waits with it
-- for a restore and is never taken by a later agent of the same name.

CREATE TABLE incarnations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('manager', 'agent')),
    created_at    INTEGER NOT NULL,
    -- live: has the agents row. destroying/purging: the store has let go of it and its files are
    -- still to be moved/deleted (finished at the next start after a crash). tombstoned: its files
    -- wait in `tombstone` for a restore. purged: gone for good.
    state         TEXT NOT NULL DEFAULT 'live'
                  CHECK (state IN ('live', 'destroying', 'purging', 'tombstoned', 'purged')),
    tombstone     TEXT,
    destroyed_at  INTEGER
) STRICT;

CREATE UNIQUE INDEX incarnations_by_tombstone ON incarnations (tombstone) WHERE tombstone IS NOT NULL;
CREATE INDEX incarnations_unfinished ON incarnations (id) WHERE state IN ('destroying', 'purging');

-- The agents that exist now get an incarnation each.
INSERT INTO incarnations (name, kind, created_at)
    SELECT name, kind, created_at FROM agents ORDER BY created_at, name;
-- NULL only for a row written by hand: the hive always sets it.
ALTER TABLE agents ADD COLUMN incarnation INTEGER;
UPDATE agents SET incarnation = (SELECT id FROM incarnations i WHERE i.name = agents.name);
CREATE UNIQUE INDEX agents_by_incarnation ON agents (incarnation);

-- The recipient's incarnation (NULL for the operator's inbox); existing rows get the current
-- agents' incarnations.
ALTER TABLE messages ADD COLUMN incarnation INTEGER;
UPDATE messages SET incarnation = (SELECT incarnation FROM agents WHERE name = messages.recipient);

ALTER TABLE turns ADD COLUMN incarnation INTEGER;
UPDATE turns SET incarnation = (SELECT incarnation FROM agents WHERE name = turns.agent);

-- The asker's incarnation.
ALTER TABLE questions ADD COLUMN incarnation INTEGER;
UPDATE questions SET incarnation = (SELECT incarnation FROM agents WHERE name = questions.asker);

ALTER TABLE reminders ADD COLUMN incarnation INTEGER;
UPDATE reminders SET incarnation = (SELECT incarnation FROM agents WHERE name = reminders.agent);
CREATE INDEX reminders_by_incarnation ON reminders (incarnation) WHERE status = 'pending';

ALTER TABLE deploys ADD COLUMN incarnation INTEGER;
UPDATE deploys SET incarnation = (SELECT incarnation FROM agents WHERE name = deploys.agent);
CREATE INDEX deploys_by_incarnation ON deploys (incarnation, id);

-- A spawn request has no incarnation until it is approved (the approval creates it).
ALTER TABLE approvals ADD COLUMN incarnation INTEGER;
UPDATE approvals SET incarnation = (SELECT incarnation FROM agents WHERE name = approvals.agent)
    WHERE kind = 'apply' OR status != 'pending';

-- Per-turn stats (computed once, when the turn finishes, in the same transaction), so reading an
-- agent's stats is a range read instead of a walk over turn_events and messages.

-- Where a turn's own sends start: the newest message id when it was leased. Its sends are the
-- rows after it, found by a rowid range rather than a scan of the whole table.
ALTER TABLE turns ADD COLUMN sent_after INTEGER;
-- 0, or for one copy of a `*` send the id of its first copy: the sender sent one broadcast, not n
-- agent messages.
ALTER TABLE messages ADD COLUMN broadcast INTEGER NOT NULL DEFAULT 0;

CREATE TABLE turn_stats (
    turn           INTEGER PRIMARY KEY,
    agent          TEXT NOT NULL,
    incarnation    INTEGER,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER NOT NULL,
    -- The harness's reported wall-clock time, else finished_at - started_at.
    duration_ms    INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cost_usd       REAL NOT NULL,
    -- JSON object: tool name -> calls, from the turn's stored assistant events.
    tool_calls     TEXT NOT NULL,
    sent_agent     INTEGER NOT NULL,
    sent_operator  INTEGER NOT NULL,
    sent_broadcast INTEGER NOT NULL,
    outcome        TEXT NOT NULL
) STRICT;

CREATE INDEX turn_stats_by_agent ON turn_stats (agent, incarnation, finished_at);

-- Turns that finished before this migration: what their harness reported; their tool calls and
-- sends were never counted.
INSERT INTO turn_stats
    SELECT id, agent, incarnation, started_at, finished_at,
           coalesce(json_extract(usage, '$.duration_ms'), max(finished_at - started_at, 0)),
           coalesce(json_extract(usage, '$.input_tokens'), 0),
           coalesce(json_extract(usage, '$.output_tokens'), 0),
           coalesce(json_extract(usage, '$.cost_usd'), 0.0),
           '{}', 0, 0, 0, coalesce(outcome, '')
    FROM turns WHERE finished_at IS NOT NULL AND json_valid(coalesce(usage, '{}'));

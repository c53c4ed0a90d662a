-- The check build of each requested commit (made before the operator decides) and the risk flags
-- its evaluated config gives against what runs. One row per approval; absent while none started.
CREATE TABLE approval_checks (
    approval_id   INTEGER PRIMARY KEY REFERENCES approvals (id),
    status        TEXT NOT NULL CHECK (status IN ('checking', 'ok', 'failed', 'unavailable')),
    -- nix's message (failed) or why it was not checked (unavailable)
    message       TEXT,
    closure_bytes INTEGER,
    -- the image's agent.json (ok)
    config        TEXT,
    -- JSON array of proto RiskFlag (ok)
    risk          TEXT,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER
) STRICT;

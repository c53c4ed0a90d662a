-- Approvals, deploys and the audit chain (DESIGN §7, §14). Rows of all three are never deleted.

CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('spawn', 'apply')),
    agent        TEXT NOT NULL,
    requester    TEXT NOT NULL,
    -- The full sha, pinned in the applied repo as tag proposal/<id>.
    commit_sha   TEXT NOT NULL,
    -- The applied HEAD the diff was taken against (NULL for a spawn).
    base_sha     TEXT,
    description  TEXT NOT NULL DEFAULT '',
    diff         TEXT NOT NULL,
    stat         TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'building', 'deployed', 'failed', 'denied')),
    note         TEXT,
    created_at   INTEGER NOT NULL,
    resolved_at  INTEGER
) STRICT;

CREATE INDEX approvals_by_status ON approvals (status, id);
CREATE INDEX approvals_by_agent ON approvals (agent, id);

-- Every move of an applied HEAD: a spawn, an approved apply, a rollback.
CREATE TABLE deploys (
    id           INTEGER PRIMARY KEY,
    agent        TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    approval_id  INTEGER,
    kind         TEXT NOT NULL CHECK (kind IN ('spawn', 'apply', 'rollback')),
    status       TEXT NOT NULL CHECK (status IN ('applied', 'building', 'deployed', 'failed')),
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    log_tail     TEXT
) STRICT;

CREATE INDEX deploys_by_agent ON deploys (agent, id);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    agent      TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
) STRICT;

CREATE INDEX audit_by_agent ON audit (agent, id);

-- Deploys gain the kind `update` (the operator or the manager rebuilt an agent whose applied HEAD
-- was not what ran, e.g. after a failed build) and keep the nix message of a failed build in
-- `log_tail`. SQLite cannot change a CHECK in place: the table is rebuilt with the same rows.

CREATE TABLE deploys_new (
    id           INTEGER PRIMARY KEY,
    agent        TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    approval_id  INTEGER,
    kind         TEXT NOT NULL CHECK (kind IN ('spawn', 'apply', 'rollback', 'update')),
    status       TEXT NOT NULL CHECK (status IN ('applied', 'building', 'deployed', 'failed')),
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    log_tail     TEXT,
    incarnation  INTEGER
) STRICT;

INSERT INTO deploys_new (id, agent, commit_sha, approval_id, kind, status, created_at, finished_at,
                         log_tail, incarnation)
    SELECT id, agent, commit_sha, approval_id, kind, status, created_at, finished_at, log_tail,
           incarnation
    FROM deploys;
DROP TABLE deploys;
ALTER TABLE deploys_new RENAME TO deploys;
CREATE INDEX deploys_by_agent ON deploys (agent, id);
CREATE INDEX deploys_by_incarnation ON deploys (incarnation, id);

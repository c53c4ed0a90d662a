-- One row per model call the gateway forwarded: the usage the provider's answer reported (read
-- from the stream as it passed), for accounting and the daily token budget.
CREATE TABLE model_calls (
    id                    INTEGER PRIMARY KEY,
    agent                 TEXT NOT NULL,
    at                    INTEGER NOT NULL,
    upstream              TEXT NOT NULL,
    model                 TEXT,
    status                INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    -- From `[model.prices]`; NULL when the model has no price there.
    cost_usd              REAL,
    ms                    INTEGER NOT NULL
) STRICT;
CREATE INDEX model_calls_by_agent ON model_calls (agent, at);

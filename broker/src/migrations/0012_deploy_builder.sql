-- A deploy records the fingerprint of what its image was built with besides the agent's tree (the
-- builder, its Nix code, the harness binary, busybox: `Builder::fingerprint`). The watcher calls a
-- running image stale when it differs from today's; NULL (built before this column) is stale too.
ALTER TABLE deploys ADD COLUMN builder TEXT;

-- User-namespace ranges (DESIGN §8): every incarnation gets the first host uid of its 65536-uid
-- range once, when it is created; a peer uid on an agent's socket then names its agent. A range
-- stays held while the incarnation is live or waits in a tombstone (its files are owned by those
-- uids) and is free again once it is purged.
ALTER TABLE incarnations ADD COLUMN uid_base INTEGER;

-- The incarnations there are get ranges from the default start (0x40000000), in id order.
UPDATE incarnations SET uid_base = 1073741824 + 65536 * (
    SELECT count(*) FROM incarnations older
    WHERE older.id < incarnations.id AND older.state != 'purged'
) WHERE state != 'purged';

CREATE UNIQUE INDEX incarnations_by_uid_base ON incarnations (uid_base) WHERE state != 'purged';

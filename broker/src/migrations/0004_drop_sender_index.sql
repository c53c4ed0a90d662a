-- The sender index cost a scattered page write per sender in every group commit (64 senders:
-- ~130 page writes per batch instead of ~25) and served only the operator's "messages of agent X"
-- listing, which now walks the table from the newest row down and stops at its limit.
DROP INDEX messages_by_sender;

-- Delivery receipts: when a message was leased. Its turn stays in `lease_turn`, which is no longer
-- cleared when the turn finishes (every reader of an open lease also asks `state = 'leased'`), so
-- the path queued → leased → delivered can still be shown. Both stay NULL for a message a `recv`
-- took (delivered at once) and for one delivered before this migration; a lease given back clears
-- them with the lease.
ALTER TABLE messages ADD COLUMN leased_at INTEGER;

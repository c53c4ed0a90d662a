-- Delivery receipts: when a message was leased and to which turn, kept once the turn has finished
-- (`lease_turn` is nulled then) so the path queued → leased → delivered can still be shown. Both
-- stay NULL for a message a `recv` took (delivered at once) and for one sent before this
-- migration; a lease given back clears them with the lease.
ALTER TABLE messages ADD COLUMN leased_at INTEGER;
ALTER TABLE messages ADD COLUMN turn INTEGER;

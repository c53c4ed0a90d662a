-- `message_counts` is kept by the store's writer from now on: its tally of the rows a transaction
-- changed is written as one upsert per (recipient, incarnation, state) just before the COMMIT
-- (broker/src/store/message_counts.rs), not by a trigger per changed row. The counts the triggers
-- kept so far stay as they are. A later migration that changes rows of `messages` must recount.

DROP TRIGGER message_counts_insert;
DROP TRIGGER message_counts_delete;
DROP TRIGGER message_counts_update;

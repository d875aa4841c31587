-- Two of the outbox's index writes that buy nothing (issue 9: in a fan-out, PostgreSQL spent
-- 15% of its time inserting index entries, and every copy is inserted once and recorded once,
-- the record adding an entry to every index the row is in).
--
-- 1. `message_uuid` loses its unique index. Nothing looks a row up by it (a bounce names the row
--    by id in its return path), and it is unique by construction: a version 4 uuid made by
--    `gen_random_uuid()` or the worker (122 random bits) for each row, once.
-- 2. The erasure index (`about`, GIN) writes each row's entries at once rather than through
--    GIN's pending list: the list is merged into the index by whichever insert finds it over
--    `gin_pending_list_limit` (or by autovacuum), and a fan-out's inserts kept merging it.
--    Each newsletter copy names one address, so its entry is one key either way.

ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_message_uuid_key;
ALTER INDEX outbox_about_index SET (fastupdate = off);
SELECT gin_clean_pending_list('outbox_about_index');

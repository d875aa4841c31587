-- Fencing and never-silent failures for the outbox.

-- A fresh token per claim (gen_random_uuid() in outbox::claim). Every outcome is recorded only
-- where id, token and status = 'sending' all match: a worker whose lease ran out, and whose row
-- another claim has taken since, changes nothing (its send is the other claim's to record).
ALTER TABLE outbox ADD COLUMN claim_token uuid;

-- When an operator resolved a failure (answered the enquiry another way, corrected the address,
-- ...). A failed row with no resolved_at is an open problem: retention keeps it, and
-- rpec_emails_failed_unresolved counts it.
ALTER TABLE outbox ADD COLUMN resolved_at timestamptz;

-- Times the row was put back because the relay could not be reached at all (refused, no answer
-- to connect) or the database could not be read to prepare it. Such tries say nothing about the
-- email, so they are not `attempts` (which mail.retry.max_attempts bounds); this count only
-- spaces the next try out while the outage lasts.
ALTER TABLE outbox ADD COLUMN deferrals integer NOT NULL DEFAULT 0;

-- For an 'enquiry_undeliverable' row: the coordinators' copy (an 'enquiry' row) that failed for
-- good and that this row takes to the triage mailbox. Unique, so a failed copy is passed on once.
ALTER TABLE outbox ADD COLUMN undeliverable_of bigint;
CREATE UNIQUE INDEX outbox_undeliverable_once ON outbox (undeliverable_of)
    WHERE undeliverable_of IS NOT NULL;

-- The open failures, for the metric read at every scrape.
CREATE INDEX outbox_failed_unresolved ON outbox (kind) WHERE status = 'failed' AND resolved_at IS NULL;

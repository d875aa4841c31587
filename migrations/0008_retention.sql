-- Retention for everything personal (worker::sweep_once): the indexes each sweep filters on, so
-- that every batch finds its next rows without reading the table, and the marker that keeps a
-- newsletter's exactly-once promise after its delivery records are pruned.

-- Enquiries not yet anonymised, by age.
CREATE INDEX enquiries_to_anonymise ON enquiries (received_at) WHERE anonymised_at IS NULL;

-- Registrations still holding a name or an address, by session (their period runs from the
-- session's end).
CREATE INDEX registrations_personal ON registrations (session_id)
    WHERE email IS NOT NULL OR name IS NOT NULL;
CREATE INDEX sessions_ends ON sessions (ends_at);

-- Pending subscriptions expire with their confirmation link, 7 days after the last confirmation
-- email was queued (or after the request, for a row that never had one).
CREATE INDEX subscriptions_pending_expiry ON subscriptions ((coalesce(confirmation_sent_at, requested_at)))
    WHERE status = 'pending';
-- Unsubscribed rows are deleted by the next sweep.
CREATE INDEX subscriptions_unsubscribed ON subscriptions (id) WHERE status = 'unsubscribed';

CREATE INDEX suppressions_age ON suppressions (suppressed_at);
CREATE INDEX processed_events_age ON processed_events (processed_at);
CREATE INDEX scheduled_emails_finished ON scheduled_emails (handled_at)
    WHERE status IN ('queued', 'dropped');
CREATE INDEX digest_runs_age ON digest_runs (ran_at);

-- When retention pruned this newsletter's delivery records (`newsletter_deliveries`, who was
-- given it). Set before they are deleted, under the row's lock; the fan-out reads it under the
-- same lock and queues nothing for a newsletter whose records are gone, because without them it
-- could not tell who already has it. The newsletter row itself holds no personal data and stays.
ALTER TABLE newsletters ADD COLUMN deliveries_pruned_at timestamptz;
CREATE INDEX newsletters_to_prune ON newsletters (received_at) WHERE deliveries_pruned_at IS NULL;
CREATE INDEX newsletters_pruned ON newsletters (newsletter_id) WHERE deliveries_pruned_at IS NOT NULL;

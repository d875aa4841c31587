-- Events whose effects have been committed: the same event id delivered again changes nothing.
-- Holds no personal data.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    event_type   text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Contact-form enquiries. The personal columns are nulled by erasure and retention.
CREATE TABLE enquiries (
    enquiry_id   text PRIMARY KEY,
    event_id     uuid NOT NULL,
    -- The region that answers it; NULL when it went to the triage mailbox.
    region       text,
    -- How it was routed: 'region' (named), 'area' (matched) or 'triage'.
    routed_by    text NOT NULL CHECK (routed_by IN ('region', 'area', 'triage')),
    topic        text NOT NULL,
    setting      text NOT NULL,
    urgent       boolean NOT NULL,
    name         text,
    email        text,
    organisation text,
    phone        text,
    area         text,
    message      text,
    received_at  timestamptz NOT NULL,
    anonymised_at timestamptz
);
CREATE INDEX enquiries_email ON enquiries (lower(email));
CREATE INDEX enquiries_received ON enquiries (received_at);

-- Every email to send, written in the same transaction as the effects of the event that caused
-- it. Rendered from `template` and `context` when sent, so one row is one email whatever the
-- template becomes. Rows are claimed with FOR UPDATE SKIP LOCKED and a lease (`claimed_until`),
-- so several workers can send and a crashed worker's claims come back.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    -- What the email is, for metrics and policy: 'enquiry', 'enquiry_ack', ...
    kind            text NOT NULL,
    template        text NOT NULL,
    -- Which From address: 'transactional' or 'bulk'.
    stream          text NOT NULL CHECK (stream IN ('transactional', 'bulk')),
    recipients      text[] NOT NULL,
    reply_to        text,
    context         jsonb NOT NULL,
    -- Extra headers from trusted values only (Importance, List-Id, ...).
    headers         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Files to attach: [{"filename", "content_type", "content"}] (text content, e.g. .ics).
    attachments     jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- The Message-ID's local part: the same on every attempt.
    message_uuid    uuid NOT NULL UNIQUE,
    source_event    uuid,
    priority        smallint NOT NULL DEFAULT 0,
    -- 'cancelled': not sent because its cause went away before it was due (a cancelled
    -- session, an unsubscribed reader); decided at send time by mail::prepare.
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    -- The relay's last reply (or why rendering failed).
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX outbox_due ON outbox (priority DESC, next_attempt_at) WHERE status IN ('pending', 'sending');
CREATE INDEX outbox_finished ON outbox (created_at) WHERE status IN ('sent', 'failed', 'cancelled');

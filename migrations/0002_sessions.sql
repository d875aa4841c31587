-- Virtual training sessions, as the website last described them.
CREATE TABLE sessions (
    session_id       text PRIMARY KEY,
    title            text NOT NULL,
    audience         text NOT NULL,
    -- NULL: a national session, open to everyone.
    region           text,
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    registration_url text NOT NULL,
    joining_url      text,
    description      text,
    status           text NOT NULL DEFAULT 'scheduled' CHECK (status IN ('scheduled', 'cancelled')),
    cancel_reason    text,
    -- The iCalendar SEQUENCE: raised on every change a calendar must pick up.
    sequence         integer NOT NULL DEFAULT 0,
    -- When the worker first learned of it (by its clock): the digest lists sessions by this.
    first_seen_at    timestamptz NOT NULL,
    -- occurred_at of the last event applied, so that a late, older update is not applied.
    last_event_at    timestamptz NOT NULL
);
CREATE INDEX sessions_first_seen ON sessions (first_seen_at);

-- People registered for a session. Name and email are nulled by erasure.
CREATE TABLE registrations (
    registration_id text PRIMARY KEY,
    session_id      text NOT NULL REFERENCES sessions (session_id),
    name            text,
    email           text,
    status          text NOT NULL DEFAULT 'registered' CHECK (status IN ('registered', 'cancelled')),
    created_at      timestamptz NOT NULL,
    cancelled_at    timestamptz
);
CREATE INDEX registrations_session ON registrations (session_id) WHERE status = 'registered';
CREATE INDEX registrations_email ON registrations (lower(email));

-- Reminders (one per registration and offset) and coordinator briefings (one per session),
-- planned ahead. The scheduler claims due rows with FOR UPDATE SKIP LOCKED and, in the same
-- transaction, either hands each to the outbox ('queued') or drops it ('dropped': its session
-- was cancelled or has started, or its registration was cancelled).
CREATE TABLE scheduled_emails (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('reminder', 'briefing')),
    session_id      text NOT NULL REFERENCES sessions (session_id),
    registration_id text REFERENCES registrations (registration_id),
    -- The configured offset it was planned from ("7d", "1h").
    offset_label    text NOT NULL,
    due_at          timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'queued', 'dropped')),
    outbox_id       bigint,
    handled_at      timestamptz,
    CHECK ((kind = 'reminder') = (registration_id IS NOT NULL))
);
CREATE INDEX scheduled_emails_due ON scheduled_emails (due_at) WHERE status = 'pending';
CREATE UNIQUE INDEX scheduled_emails_once ON scheduled_emails (kind, session_id, registration_id, offset_label)
    NULLS NOT DISTINCT WHERE status = 'pending';

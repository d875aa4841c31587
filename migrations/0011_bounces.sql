-- Bounces and complaints that come back after the relay took an email (`bounce`): delivery
-- status notifications and feedback reports sent to the email's VERP return path.

-- One row per email, recipient and kind of bounce: the same notification delivered twice finds
-- its row and changes nothing more. `recipient` is the address the email went to, lower-cased
-- (the outbox row's, not what the remote server calls it). `status` is the enhanced status
-- code (5.1.1), `reason` the remote server's diagnostic: both can quote the address, so erasure
-- and retention (retention.bounce_days) cover the rows. The email's own row may go first
-- (outbox retention, erasure): its bounces go with it.
CREATE TABLE bounces (
    id          bigserial PRIMARY KEY,
    outbox_id   bigint NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    recipient   text NOT NULL CHECK (recipient = lower(recipient)),
    kind        text NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint')),
    status      text,
    reason      text,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (outbox_id, recipient, kind)
);
-- Soft bounces of an address within bounces.soft_window_days; erasure by address.
CREATE INDEX bounces_recipient ON bounces (recipient, received_at);
CREATE INDEX bounces_age ON bounces (received_at);

-- Mail at the bounce address that could not be understood: kept for an operator
-- (retention.unparsed_bounce_days), never retried. `content` is the message as text (invalid
-- UTF-8 replaced), so that an erasure can find an address in it.
CREATE TABLE unparsed_bounces (
    id          bigserial PRIMARY KEY,
    -- Which email it was about, when its return path said (and the email is still here).
    outbox_id   bigint REFERENCES outbox (id) ON DELETE SET NULL,
    content     text NOT NULL,
    -- SHA-256 of the message as received: a server that sends the same one again (or an
    -- operator who ingests a mailbox twice) adds nothing.
    digest      bytea NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX unparsed_bounces_age ON unparsed_bounces (received_at);

-- Regional newsletters: subscriptions (double opt-in), suppressions, published newsletters and
-- who has been given each one, and the audit of erasures.

-- One row per (region, address). Addresses are matched case-insensitively everywhere: the
-- unique index and every lookup use lower(email); the address is kept as the person typed it.
CREATE TABLE subscriptions (
    id                   bigserial PRIMARY KEY,
    region               text NOT NULL,
    email                text NOT NULL,
    name                 text,
    -- 'pending' until the link in the confirmation email is followed; 'unsubscribed' by the
    -- reader's link, a subscription.cancelled event or nothing else.
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'confirmed', 'unsubscribed')),
    requested_at         timestamptz NOT NULL DEFAULT now(),
    -- When a confirmation email was last queued for this subscription: re-sends to an address
    -- are limited to one a day.
    confirmation_sent_at timestamptz,
    confirmed_at         timestamptz,
    unsubscribed_at      timestamptz
);
CREATE UNIQUE INDEX subscriptions_region_email ON subscriptions (region, lower(email));
CREATE INDEX subscriptions_email ON subscriptions (lower(email));
CREATE INDEX subscriptions_confirmed ON subscriptions (region, id) WHERE status = 'confirmed';

-- Addresses that bulk mail (newsletters, digests) must not go to: a relay refused them for good
-- (5xx). `email` is lower-cased. Transactional mail is not affected.
CREATE TABLE suppressions (
    email         text PRIMARY KEY CHECK (email = lower(email)),
    reason        text NOT NULL,
    suppressed_at timestamptz NOT NULL DEFAULT now()
);

-- The one rule for who gets bulk mail from a region: confirmed and not suppressed. The weekly
-- digest and the newsletter fan-out both select from here.
CREATE VIEW bulk_recipients AS
    SELECT s.id AS subscription_id, s.region, s.email, s.name
    FROM subscriptions s
    WHERE s.status = 'confirmed'
      AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.email = lower(s.email));

-- Newsletters as published, with the markdown already rendered (HTML and plain text, per
-- section), so that each email is completed at send time from here and the reader's row.
-- Holds no personal data.
CREATE TABLE newsletters (
    newsletter_id text PRIMARY KEY,
    event_id      uuid NOT NULL,
    region        text NOT NULL,
    subject       text NOT NULL,
    preheader     text,
    -- [{"heading", "html", "text"}]
    sections      jsonb NOT NULL,
    web_url       text,
    published_at  timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);

-- Who has been given each newsletter: the exactly-once guard. The fan-out inserts here and into
-- the outbox in one statement, skipping pairs already present, so a second event for the same
-- newsletter (or a fan-out repeated after a crash) gives nobody a second copy. Kept after the
-- outbox rows are swept away by retention.
CREATE TABLE newsletter_deliveries (
    newsletter_id   text NOT NULL REFERENCES newsletters (newsletter_id) ON DELETE CASCADE,
    subscription_id bigint NOT NULL,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (newsletter_id, subscription_id)
);
CREATE INDEX newsletter_deliveries_subscription ON newsletter_deliveries (subscription_id);

-- That an erasure happened, without whom it was for: the event, when, and how many rows of each
-- kind were removed or anonymised. No address, no hash of one (a hash of an address can be
-- reversed by guessing).
CREATE TABLE erasures (
    event_id     uuid PRIMARY KEY,
    requested_at timestamptz NOT NULL,
    erased_at    timestamptz NOT NULL DEFAULT now(),
    -- {"subscriptions": 2, "enquiries": 1, ...}
    counts       jsonb NOT NULL
);

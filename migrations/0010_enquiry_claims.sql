-- Claiming enquiries: who took each one and when, its deadlines in working time, and how far it
-- has been escalated. Times are UTC; people see them in UK time.
ALTER TABLE enquiries
    -- When it must be claimed by (working time from its arrival, per topic and region), and when
    -- the national coordinators get a second notice. NULL for enquiries from before claiming.
    ADD COLUMN claim_deadline_at timestamptz,
    ADD COLUMN second_notice_at  timestamptz,
    -- 0: not escalated; 1: escalated to the national and triage mailboxes, the region reminded;
    -- 2: the second notice to the national coordinators queued too. Raised in the transaction
    -- that queues the emails, under the row's lock: each level is queued once.
    ADD COLUMN escalation_level  smallint NOT NULL DEFAULT 0 CHECK (escalation_level BETWEEN 0 AND 2),
    -- The first claim wins: these are set once, where claimed_at IS NULL.
    ADD COLUMN claimed_at        timestamptz,
    -- The mailbox that took it (a coordinator's, from their copy's link, or `by` of an
    -- enquiry.claimed event). Kept for the coordinators' statistics; the submitter's erasure
    -- leaves it, an erasure of that mailbox's address removes it.
    ADD COLUMN claimed_by        text,
    ADD COLUMN claimed_via       text CHECK (claimed_via IN ('link', 'event')),
    -- A case system's note with its claim: free text, so erased and anonymised like the message.
    ADD COLUMN claim_note        text;

-- The escalations still to come: unclaimed enquiries by deadline.
CREATE INDEX enquiries_unclaimed ON enquiries (claim_deadline_at)
    WHERE claimed_at IS NULL AND escalation_level < 2;

-- One row per copy of an enquiry with a claim link: the coordinators' copies (one per mailbox),
-- the reminders to them and the escalations. The link's token signs this row's id, so a claim
-- records which mailbox took the enquiry.
CREATE TABLE enquiry_copies (
    id         bigserial PRIMARY KEY,
    enquiry_id text NOT NULL REFERENCES enquiries (enquiry_id),
    -- The mailbox the copy went to (an escalation's mailboxes, comma-separated).
    mailbox    text,
    kind       text NOT NULL CHECK (kind IN ('enquiry', 'reminder', 'escalation')),
    created_at timestamptz NOT NULL
);
CREATE INDEX enquiry_copies_enquiry ON enquiry_copies (enquiry_id);
CREATE INDEX enquiry_copies_mailbox ON enquiry_copies (lower(mailbox));
CREATE INDEX enquiries_claimed_by ON enquiries (lower(claimed_by));

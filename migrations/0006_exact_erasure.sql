-- Erasure finds exactly the person. Every outbox row lists, lower-cased, the addresses it holds:
-- its recipients, its Reply-To, and the address in its content (the submitter's, in the
-- coordinators' copy of an enquiry). Erasure matches `$1 = ANY(about)` through the index, where
-- it once searched the row's JSON for a substring (erasing o@x.org took jo@x.org's mail too).
ALTER TABLE outbox ADD COLUMN about text[] NOT NULL DEFAULT '{}';

-- Kept by the database itself, so that no way of writing a row (one row, a set-based fan-out,
-- a copy to triage) can forget it.
CREATE FUNCTION outbox_about() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.about := ARRAY(
        SELECT DISTINCT lower(a)
        FROM unnest(NEW.recipients || ARRAY[NEW.reply_to, NEW.context ->> 'email']) AS a
        WHERE a IS NOT NULL AND a <> ''
    );
    RETURN NEW;
END
$$;

CREATE TRIGGER outbox_about BEFORE INSERT OR UPDATE OF recipients, reply_to, context ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_about();

UPDATE outbox SET recipients = recipients;

CREATE INDEX outbox_about_index ON outbox USING gin (about);

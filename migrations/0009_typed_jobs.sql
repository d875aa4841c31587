-- Typed email jobs. An outbox row holds its job (`outbox::job::Job`, a serde enum tagged by
-- kind) where it held a kind string and loose JSON: `context` becomes `job`, whose keys are the
-- context's plus `kind`, so the rows an older worker queued are sent by this one as they are.
--
-- A worker of the previous version must be stopped before this runs: it reads and writes
-- `context` (its statements fail, and nothing is lost, once the column is gone).

ALTER TABLE outbox RENAME COLUMN context TO job;

-- The addresses a row holds (erasure's index, see 0006) now come from its job: the submitter's
-- address in a coordinators' copy of an enquiry or in its triage copy. The trigger follows the
-- renamed column by itself; its function names it.
CREATE OR REPLACE FUNCTION outbox_about() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.about := ARRAY(
        SELECT DISTINCT lower(a)
        FROM unnest(NEW.recipients || ARRAY[NEW.reply_to, NEW.job ->> 'email']) AS a
        WHERE a IS NOT NULL AND a <> ''
    );
    RETURN NEW;
END
$$;

-- (A context that is not a JSON object, which no version wrote, is kept under a key of its
-- own: its job does not parse, and the row fails with that reason when it is next claimed.)
UPDATE outbox
SET job = CASE WHEN jsonb_typeof(job) = 'object' THEN job
               ELSE jsonb_build_object('context', job) END
          || jsonb_build_object('kind', kind);

-- `kind` stays a column of its own (metrics, the indexes, operators' queries), and always says
-- what the job says (a job without a kind too: a CHECK that comes to NULL would let it pass).
ALTER TABLE outbox ADD CONSTRAINT outbox_job_kind CHECK (job ->> 'kind' IS NOT DISTINCT FROM kind);

-- The sender's claim joins a reader's subscription by `(job ->> 'subscription_id')::bigint`:
-- a value that does not cast would fail every claim, not only its own row's.
ALTER TABLE outbox ADD CONSTRAINT outbox_job_subscription_id
    CHECK (job ->> 'subscription_id' ~ '^[0-9]{1,18}$');

-- The weekly regional digest: where each region's schedule stands, and what each firing did.
-- Holds no personal data.

-- The last firing handled per region. A region's first sight sets it to "now", so a new
-- deployment does not fire for times before it existed.
CREATE TABLE digest_state (
    region       text PRIMARY KEY,
    last_fire_at timestamptz NOT NULL
);

-- One row per firing, sessions or not: the record that a schedule fired exactly once.
CREATE TABLE digest_runs (
    region     text NOT NULL,
    fire_at    timestamptz NOT NULL,
    ran_at     timestamptz NOT NULL,
    sessions   integer NOT NULL,
    recipients integer NOT NULL,
    PRIMARY KEY (region, fire_at)
);

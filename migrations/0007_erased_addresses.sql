-- Events that were already on their way when an erasure came (waiting in the retry queue for
-- their session, or on the dead-letter queue to be replayed) must not bring the person's data
-- back. For as long as a dead letter can live, an erasure leaves a keyed hash of the address
-- (HMAC-SHA256 with the worker's signing key, so it cannot be reversed by guessing addresses
-- without that key); an event about that address that occurred before the erasure is dropped,
-- and counted in the erasure's audit row. Nothing here names the person.
CREATE TABLE erased_addresses (
    address_key   bytea PRIMARY KEY,
    -- occurred_at of the erasure request: events that occurred before it are dropped.
    requested_at  timestamptz NOT NULL,
    erasure_event uuid NOT NULL REFERENCES erasures (event_id),
    kept_until    timestamptz NOT NULL
);
CREATE INDEX erased_addresses_kept_until ON erased_addresses (kept_until);

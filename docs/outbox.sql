-- The Tidings transactional outbox (printed by `tidings outbox-ddl`).
-- Insert a row in the same transaction as your change; Tidings publishes it
-- once, in `id` order per `partition_key` (among the rows committed when it
-- reads), then sets `processed_at` (or
-- deletes the row with delete_published = true). A row that cannot be
-- published keeps its message and gets `dead_letter_reason`.
CREATE TABLE IF NOT EXISTS tidings_outbox (
    id                 bigserial PRIMARY KEY,
    partition_key      text NOT NULL DEFAULT '',
    message            jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    processed_at       timestamptz,
    dead_letter_reason text
);

CREATE INDEX IF NOT EXISTS tidings_outbox_unprocessed
    ON tidings_outbox (partition_key, id) WHERE processed_at IS NULL;

CREATE INDEX IF NOT EXISTS tidings_outbox_unprocessed_order
    ON tidings_outbox (id) WHERE processed_at IS NULL;

CREATE INDEX IF NOT EXISTS tidings_outbox_dead_letters
    ON tidings_outbox (id) WHERE dead_letter_reason IS NOT NULL;

-- Wakes Tidings when a transaction that inserted rows commits (a rolled-back
-- transaction notifies nobody).
CREATE OR REPLACE FUNCTION tidings_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_outbox', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER tidings_outbox_notify
    AFTER INSERT ON tidings_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_outbox_notify();

-- The Tidings transactional outbox (printed by `tidings outbox-ddl`).
-- Insert a row in the same transaction as your change; Tidings publishes it
-- once, in `id` order per `partition_key` (among the rows committed when it
-- reads), then sets `processed_at` (or
-- deletes the row with delete_published = true). A row that cannot be
-- published keeps its message and gets `dead_letter_reason`.
CREATE TABLE IF NOT EXISTS {table} (
    id                 bigserial PRIMARY KEY,
    partition_key      text NOT NULL DEFAULT '',
    message            jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    processed_at       timestamptz,
    dead_letter_reason text
);

CREATE INDEX IF NOT EXISTS {bare}_unprocessed
    ON {table} (partition_key, id) WHERE processed_at IS NULL;

CREATE INDEX IF NOT EXISTS {bare}_unprocessed_order
    ON {table} (id) WHERE processed_at IS NULL;

CREATE INDEX IF NOT EXISTS {bare}_dead_letters
    ON {table} (id) WHERE dead_letter_reason IS NOT NULL;

-- Wakes Tidings when a transaction that inserted rows commits (a rolled-back
-- transaction notifies nobody).
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER {bare}_notify
    AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();

-- 004: relay bookkeeping: slots created by the relay and their one-shot backfill queue.
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/004_relay_state.sql
CREATE TABLE IF NOT EXISTS public.cdc_slot (
    slot_name      text        PRIMARY KEY,
    consistent_lsn pg_lsn      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    backfilled_at  timestamptz
);

-- PENDING outbox rows that predate a slot, captured under the slot's exported snapshot
-- (so exactly the rows the slot will never stream), drained once in created_at order.
CREATE TABLE IF NOT EXISTS public.cdc_backfill (
    slot_name text   NOT NULL REFERENCES public.cdc_slot (slot_name) ON DELETE CASCADE,
    seq       bigint NOT NULL,
    event_id  uuid   NOT NULL,
    PRIMARY KEY (slot_name, seq)
);

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (4, 'relay_state', 'c15b4a8776717f52c0a705871c49c77a328673784135ec598f8ba8a1b1f7e211') ON CONFLICT (version) DO NOTHING;

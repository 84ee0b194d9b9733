-- 006: the relay's least privilege, and what it knows of the Redis it publishes to.
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/006_relay_role.sql
--
-- `cdc_relay` is a NOLOGIN group role holding every privilege `cdc run` uses. A relay logs
-- in with a role of its own that is a member (REPLICATION is not inherited, so the login
-- role carries it):  CREATE ROLE relay LOGIN REPLICATION PASSWORD '...' IN ROLE cdc_relay;

-- Which Redis the relay last published to (the token it wrote to axiom:cdc:instance), and
-- whether that Redis was found reset: emptied or replaced after it acknowledged events.
CREATE TABLE IF NOT EXISTS public.cdc_redis_state (
    slot_name       text        PRIMARY KEY,
    instance        text        NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now(),
    reset_at        timestamptz,
    reset_lsn       pg_lsn,  -- the WAL position when the reset was found
    reset_count     integer     NOT NULL DEFAULT 0,
    acknowledged_at timestamptz
);

-- A dead letter whose payload was over CDC_MAX_EVENT_BYTES keeps a bounded prefix only.
ALTER TABLE public.event_dead_letter ADD COLUMN IF NOT EXISTS payload_bytes integer;
ALTER TABLE public.event_dead_letter
    ADD COLUMN IF NOT EXISTS payload_truncated boolean NOT NULL DEFAULT false;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_relay') THEN
        CREATE ROLE cdc_relay NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO cdc_relay;
GRANT SELECT, UPDATE ON public.event_outbox TO cdc_relay;
GRANT SELECT, INSERT, UPDATE ON public.event_dead_letter TO cdc_relay;
GRANT USAGE ON SEQUENCE public.event_dead_letter_id_seq TO cdc_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.cdc_slot TO cdc_relay;
GRANT SELECT, INSERT, DELETE ON public.cdc_backfill TO cdc_relay;
GRANT SELECT, INSERT, UPDATE ON public.cdc_redis_state TO cdc_relay;
GRANT SELECT ON public.cdc_schema_migrations TO cdc_relay;

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (6, 'relay_role', '67a538b41c9b09ff30b304933f292ee64f5970a76d3019ad41dde50bdac454d4') ON CONFLICT (version) DO NOTHING;

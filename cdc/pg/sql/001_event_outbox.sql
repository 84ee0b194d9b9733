-- 001: the transactional outbox and its dead letters (seed P0-01).
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/001_event_outbox.sql
CREATE TABLE IF NOT EXISTS public.cdc_schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.event_outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status         text        NOT NULL DEFAULT 'PENDING',
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    retry_count    integer     NOT NULL DEFAULT 0,
    last_error     text,
    CONSTRAINT event_outbox_status_check
        CHECK (status IN ('PENDING', 'PUBLISHED', 'FAILED', 'DEAD_LETTER'))
);

-- Serves the backfill's "PENDING by created_at" and the pending gauge.
CREATE INDEX IF NOT EXISTS event_outbox_pending_created_idx
    ON public.event_outbox (created_at) WHERE status = 'PENDING';
-- Serves `cdc replay --since` and `cdc prune --older-than`.
CREATE INDEX IF NOT EXISTS event_outbox_created_idx ON public.event_outbox (created_at);
-- A duplicate idempotency key fails inside the producer's own transaction.
CREATE UNIQUE INDEX IF NOT EXISTS event_outbox_idempotency_uidx
    ON public.event_outbox (tenant_id, (payload->>'idempotency_key'))
    WHERE payload ? 'idempotency_key';

CREATE TABLE IF NOT EXISTS public.event_dead_letter (
    id               bigserial   PRIMARY KEY,
    event_id         uuid        NOT NULL UNIQUE,
    tenant_id        text        NOT NULL,
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    stream           text,
    error            text        NOT NULL,
    retry_count      integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    replay_count     integer     NOT NULL DEFAULT 0
);

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (1, 'event_outbox', '0a08474d211de7fc8a510eff0612ee853d6ab1a168d3bdbe6ec32c09502184ab') ON CONFLICT (version) DO NOTHING;

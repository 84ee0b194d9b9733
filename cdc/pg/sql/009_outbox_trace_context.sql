-- 009: W3C trace context on the outbox (cdc/tracing.py): emit fills it from the producer's
-- OpenTelemetry span, the relay copies it into the stream entry, the consumer continues it.
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/009_outbox_trace_context.sql
-- Nullable, no default, no constraint, no index: the ALTER only changes the catalog (no
-- table rewrite or scan), and the write-back stays a HOT update (no index names them).
-- Untraced events leave both NULL and their entries carry neither field.
ALTER TABLE public.event_outbox ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE public.event_outbox ADD COLUMN IF NOT EXISTS tracestate text;

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (9, 'outbox_trace_context', '3ea969470e9c68d164292070ca5f76f6030d2d5f9c4c4d260df24eec67abd6c7') ON CONFLICT (version) DO NOTHING;

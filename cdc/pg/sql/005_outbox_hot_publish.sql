-- 005: make the relay's write-back (status → PUBLISHED, published_at) a HOT update.
-- PostgreSQL updates a row in place on its page, without touching any index, only when no
-- index mentions a changed column (its predicate included) and the page has room for the
-- new row version. An outbox row is updated exactly once, so half of each page is kept for
-- that version, and a little more: the published version is ~10 bytes longer.
-- `python -m bench.bench_writeback` measures the gain (bench/RESULTS.md: a faster UPDATE,
-- less than half the WAL); producers' INSERTs also maintain one index fewer.
-- The pending gauge no longer needs a PENDING index (see cdc/sampler.py).
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/005_outbox_hot_publish.sql
-- fillfactor applies to pages written from now on; existing pages keep their rows.
DROP INDEX IF EXISTS public.event_outbox_pending_created_idx;
ALTER TABLE public.event_outbox SET (fillfactor = 45);

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (5, 'outbox_hot_publish', 'adc82abd0dc5472e626561c29321d7703a057f371fe5609ae2945fd046de1678') ON CONFLICT (version) DO NOTHING;

-- 002: case statistics for Vision (seed P0-02). Core owns core.core_case; PL/pgSQL triggers
-- keep per-tenant, per-status counters; vision.case_stats is all Vision's roles may read.
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/002_case_stats.sql
--
-- Counters: one row per (tenant, status, shard) where shard = the writer's backend pid, so two
-- concurrent transactions never update the same counter row (a backend runs one transaction
-- at a time) and a busy tenant has no hot row. Shard 0 holds folded totals; only
-- core.fold_case_stats() / core.rebuild_case_stats() write it. The view sums the shards.
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS vision;

CREATE TABLE IF NOT EXISTS core.core_case (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  text        NOT NULL CONSTRAINT core_case_tenant_check CHECK (tenant_id <> ''),
    status     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS core_case_tenant_status_idx ON core.core_case (tenant_id, status);

CREATE TABLE IF NOT EXISTS core.case_stats_shard (
    tenant_id text    NOT NULL,
    status    text    NOT NULL,
    shard     integer NOT NULL,  -- pg_backend_pid() of the writer; 0 = folded
    n         bigint  NOT NULL,  -- may be negative on one shard; the sum over shards is exact
    PRIMARY KEY (tenant_id, status, shard)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

-- Row changes: -1 on the old (tenant, status), +1 on the new, on this backend's shard.
-- SECURITY INVOKER on purpose (the writer needs core_writer's rights): a SECURITY DEFINER
-- function must pin search_path, and that SET costs ~15% of the trigger at 8 writers.
CREATE OR REPLACE FUNCTION core.case_stats_on_row() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO core.case_stats_shard AS c (tenant_id, status, shard, n)
        VALUES (OLD.tenant_id, OLD.status, pg_backend_pid(), -1)
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n - 1;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO core.case_stats_shard AS c (tenant_id, status, shard, n)
        VALUES (NEW.tenant_id, NEW.status, pg_backend_pid(), 1)
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + 1;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE holds ACCESS EXCLUSIVE on core_case, so no writer is in flight: empty the counters
-- too. TRUNCATE (not DELETE) so that rows committed after this transaction's snapshot go as well.
CREATE OR REPLACE FUNCTION core.case_stats_on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    TRUNCATE core.case_stats_shard;
    RETURN NULL;
END
$$;

-- Domain events in the writer's own transaction (contracts in cdc/contracts.py).
CREATE OR REPLACE FUNCTION core.case_events_on_row() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
        VALUES (NEW.tenant_id, 'case', NEW.id::text, 'CASE_CREATED',
                jsonb_build_object('case_id', NEW.id::text, 'status', NEW.status));
    ELSE
        INSERT INTO public.event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
        VALUES (NEW.tenant_id, 'case', NEW.id::text, 'CASE_STATUS_CHANGED',
                jsonb_build_object('case_id', NEW.id::text, 'from_status', OLD.status,
                                   'to_status', NEW.status));
    END IF;
    RETURN NULL;
END
$$;

-- No `UPDATE OF status, tenant_id`: a BEFORE trigger could change them without naming them.
CREATE OR REPLACE TRIGGER case_stats_insert AFTER INSERT ON core.core_case
    FOR EACH ROW EXECUTE FUNCTION core.case_stats_on_row();
CREATE OR REPLACE TRIGGER case_stats_update AFTER UPDATE ON core.core_case
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
                       OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION core.case_stats_on_row();
CREATE OR REPLACE TRIGGER case_stats_delete AFTER DELETE ON core.core_case
    FOR EACH ROW EXECUTE FUNCTION core.case_stats_on_row();
CREATE OR REPLACE TRIGGER case_stats_truncate AFTER TRUNCATE ON core.core_case
    FOR EACH STATEMENT EXECUTE FUNCTION core.case_stats_on_truncate();
CREATE OR REPLACE TRIGGER case_events_insert AFTER INSERT ON core.core_case
    FOR EACH ROW EXECUTE FUNCTION core.case_events_on_row();
CREATE OR REPLACE TRIGGER case_events_update AFTER UPDATE ON core.core_case
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION core.case_events_on_row();

-- Maintenance runs one at a time (advisory lock) and never beside a TRUNCATE (ACCESS SHARE on
-- core_case, taken first, as TRUNCATE does). Lock order: core_case, advisory, counter rows.
CREATE OR REPLACE FUNCTION core.case_stats_maintenance_lock() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'case stats maintenance needs READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = '25001', HINT = 'call it outside an explicit REPEATABLE READ transaction';
    END IF;
    LOCK TABLE core.core_case IN ACCESS SHARE MODE;
    PERFORM pg_advisory_xact_lock(216793090);  -- 0x0CDC0002
END
$$;

-- Fold every shard row no writer holds into shard 0; return how many rows were folded.
-- Never waits for writers (SKIP LOCKED); a row a writer updated after this statement's
-- snapshot is re-read under its lock (READ COMMITTED), so its latest count moves.
CREATE OR REPLACE FUNCTION core.fold_case_stats() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    folded bigint;
BEGIN
    PERFORM core.case_stats_maintenance_lock();
    WITH locked AS (
        SELECT tenant_id, status, shard FROM core.case_stats_shard
        WHERE shard <> 0 FOR UPDATE SKIP LOCKED
    ), moved AS (
        DELETE FROM core.case_stats_shard c USING locked l
        WHERE c.tenant_id = l.tenant_id AND c.status = l.status AND c.shard = l.shard
        RETURNING c.tenant_id, c.status, c.n
    ), summed AS (
        SELECT tenant_id, status, sum(n)::bigint AS n, count(*) AS k
        FROM moved GROUP BY tenant_id, status
    ), kept AS (
        INSERT INTO core.case_stats_shard AS c (tenant_id, status, shard, n)
        SELECT tenant_id, status, 0, n FROM summed
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + excluded.n
    )
    SELECT coalesce(sum(k), 0) INTO folded FROM summed;
    DELETE FROM core.case_stats_shard WHERE shard = 0 AND n = 0;
    RETURN folded;
END
$$;

-- Drift repair, safe while writers run: one statement reads count(*) and the counters under
-- the same snapshot, so a transaction in flight is in neither; the difference is added to
-- shard 0 as a delta, so writers committing meanwhile keep their own increments.
CREATE OR REPLACE FUNCTION core.rebuild_case_stats(OUT corrected bigint, OUT folded bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM core.case_stats_maintenance_lock();
    WITH truth AS (
        SELECT tenant_id, status, count(*)::bigint AS n
        FROM core.core_case GROUP BY tenant_id, status
    ), have AS (
        SELECT tenant_id, status, sum(n)::bigint AS n
        FROM core.case_stats_shard GROUP BY tenant_id, status
    ), drift AS (
        SELECT coalesce(t.tenant_id, h.tenant_id) AS tenant_id,
               coalesce(t.status, h.status) AS status,
               coalesce(t.n, 0) - coalesce(h.n, 0) AS d
        FROM truth t FULL JOIN have h ON h.tenant_id = t.tenant_id AND h.status = t.status
        WHERE coalesce(t.n, 0) <> coalesce(h.n, 0)
    ), fixed AS (
        INSERT INTO core.case_stats_shard AS c (tenant_id, status, shard, n)
        SELECT tenant_id, status, 0, d FROM drift
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + excluded.n
        RETURNING 1
    )
    SELECT count(*) INTO corrected FROM fixed;
    folded := core.fold_case_stats();
END
$$;

-- Vision's window. Runs with the owner's rights (core stays closed to Vision's roles);
-- security_barrier keeps caller-supplied functions from seeing other tenants' rows.
-- vision_admin (and superusers) see every tenant; anyone else only `app.tenant_id`, and
-- nothing while it is unset. The two branches keep the per-tenant read on the primary key.
CREATE OR REPLACE VIEW vision.case_stats WITH (security_barrier = true) AS
SELECT s.tenant_id,
       sum(s.n)::bigint AS total_cases,
       coalesce(sum(s.n) FILTER (WHERE s.status = 'IN_PROGRESS'), 0)::bigint AS active_cases,
       jsonb_object_agg(s.status, s.n) AS by_status
FROM (
    SELECT c.tenant_id, c.status, sum(c.n)::bigint AS n
    FROM (
        SELECT tenant_id, status, n FROM core.case_stats_shard
        WHERE tenant_id = nullif(current_setting('app.tenant_id', true), '')
          AND NOT pg_has_role('vision_admin', 'USAGE')
        UNION ALL
        SELECT tenant_id, status, n FROM core.case_stats_shard
        WHERE pg_has_role('vision_admin', 'USAGE')
    ) c
    GROUP BY c.tenant_id, c.status
    HAVING sum(c.n) <> 0
) s
GROUP BY s.tenant_id;

DO $$
BEGIN
    CREATE ROLE vision_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another database's migration made it
END
$$;
DO $$
BEGIN
    CREATE ROLE vision_admin NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE core_writer NOLOGIN;  -- Core's application role is a member
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

REVOKE ALL ON SCHEMA core FROM PUBLIC;
REVOKE ALL ON TABLE core.core_case, core.case_stats_shard FROM PUBLIC;
REVOKE ALL ON FUNCTION core.case_stats_on_row(), core.case_stats_on_truncate(),
    core.case_events_on_row(), core.case_stats_maintenance_lock(), core.fold_case_stats(),
    core.rebuild_case_stats() FROM PUBLIC;
REVOKE ALL ON SCHEMA vision FROM PUBLIC;
REVOKE ALL ON TABLE vision.case_stats FROM PUBLIC;
GRANT USAGE ON SCHEMA vision TO vision_reader, vision_admin;
GRANT SELECT ON TABLE vision.case_stats TO vision_reader, vision_admin;
-- What the invoker triggers write on the writer's behalf. TRUNCATE of core_case stays with
-- its owner (the truncate trigger is SECURITY DEFINER).
GRANT USAGE ON SCHEMA core TO core_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE core.core_case TO core_writer;
GRANT SELECT, INSERT, UPDATE ON TABLE core.case_stats_shard TO core_writer;
GRANT INSERT ON TABLE public.event_outbox TO core_writer;
GRANT EXECUTE ON FUNCTION core.case_stats_on_row(), core.case_events_on_row() TO core_writer;

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (2, 'case_stats', 'e961c4cb83410dce34a330c3ccc7a9c9efdc7c1504a89f057d6e5fc3da8bc989') ON CONFLICT (version) DO NOTHING;

-- 008: Weaver's materialized tables and Synapse's mining models (seed P0-03: WeaverRuntime's
-- `materialized_tables`, ProcessMiningService's `_models`), durable and versioned.
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/008_registries.sql
-- State changes go to the outbox in the same transaction (cdc/stores/materialized.py,
-- cdc/stores/models.py); the contracts are in cdc/contracts.py.

-- Composite keys so that a row can only point at a parent of its own tenant.
CREATE UNIQUE INDEX IF NOT EXISTS datasource_id_tenant_uidx
    ON weaver.datasource (id, tenant_id);
CREATE UNIQUE INDEX IF NOT EXISTS mining_task_id_tenant_uidx
    ON synapse.mining_task (id, tenant_id);

--   PENDING --start--> REFRESHING --finish--> READY --start--> REFRESHING ...
--                          |  --fail-->  FAILED --start--> REFRESHING ...
--   a new definition puts a table that is not REFRESHING back to PENDING.
CREATE TABLE IF NOT EXISTS weaver.materialized_table (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       text        NOT NULL,
    datasource_id   uuid        NOT NULL,
    target          text        NOT NULL,  -- the table the refresh writes, e.g. mart.orders_daily
    definition      text        NOT NULL,  -- the query run against the source data source
    refresh_state   text        NOT NULL DEFAULT 'PENDING',
    refresh_count   integer     NOT NULL DEFAULT 0,  -- refreshes started; names each refresh
    last_refresh_at timestamptz,  -- when the last successful refresh finished
    last_row_count  bigint,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT materialized_table_source_fkey FOREIGN KEY (datasource_id, tenant_id)
        REFERENCES weaver.datasource (id, tenant_id),
    CONSTRAINT materialized_table_tenant_target_key UNIQUE (tenant_id, target),
    CONSTRAINT materialized_table_target_check CHECK (btrim(target) <> ''),
    CONSTRAINT materialized_table_definition_check CHECK (btrim(definition) <> ''),
    CONSTRAINT materialized_table_state_check
        CHECK (refresh_state IN ('PENDING', 'REFRESHING', 'READY', 'FAILED'))
);
-- Serves "the tables fed by this data source".
CREATE INDEX IF NOT EXISTS materialized_table_datasource_idx
    ON weaver.materialized_table (datasource_id);

-- Version n+1 of a task's model is written under the task row's lock. The unique index is
-- (task, version) unique (a task has one tenant) and the one index behind "newest version
-- of a task" (LIMIT 1) and "newest version of each task of a tenant" (DISTINCT ON), no sort.
CREATE TABLE IF NOT EXISTS synapse.mining_model (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    text        NOT NULL,
    task_id      uuid        NOT NULL,
    version      integer     NOT NULL,
    model_format text        NOT NULL,  -- bpmn, pnml, dfg, process_tree, ...
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mining_model_task_fkey FOREIGN KEY (task_id, tenant_id)
        REFERENCES synapse.mining_task (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT mining_model_version_check CHECK (version >= 1),
    CONSTRAINT mining_model_format_check CHECK (model_format ~ '^[a-z][a-z0-9_.+-]{0,31}$')
);
CREATE UNIQUE INDEX IF NOT EXISTS mining_model_tenant_task_version_uidx
    ON synapse.mining_model (tenant_id, task_id, version DESC);

-- Case events carry their order for Synapse's ontology cache (cdc/ontology.py): `at`, the
-- microsecond clock when the trigger ran. Writers of one case are serialised by its row lock,
-- so a later change of a case always has a larger `at` -- unlike created_at (transaction
-- start), which a writer that waited for the lock may have taken earlier.
CREATE OR REPLACE FUNCTION core.case_events_on_row() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    at bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
        VALUES (NEW.tenant_id, 'case', NEW.id::text, 'CASE_CREATED',
                jsonb_build_object('case_id', NEW.id::text, 'status', NEW.status, 'at', at));
    ELSE
        INSERT INTO public.event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
        VALUES (NEW.tenant_id, 'case', NEW.id::text, 'CASE_STATUS_CHANGED',
                jsonb_build_object('case_id', NEW.id::text, 'from_status', OLD.status,
                                   'to_status', NEW.status, 'at', at));
    END IF;
    RETURN NULL;
END
$$;

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (8, 'registries', 'f7d8a5a03214e45b786005ced7571ac163c76d33f8d83c76418c9ac7e37f6b57') ON CONFLICT (version) DO NOTHING;

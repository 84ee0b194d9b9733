-- 003: durable state for Synapse (mining) and Weaver (data sources, glossary) (seed P0-03).
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/003_synapse_weaver.sql
-- Weaver's connection_config is AES-GCM ciphertext made in Python (cdc/stores/crypto.py);
-- the key never reaches PostgreSQL.
CREATE SCHEMA IF NOT EXISTS synapse;
CREATE SCHEMA IF NOT EXISTS weaver;

CREATE TABLE IF NOT EXISTS synapse.mining_task (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    text        NOT NULL,
    task_type    text        NOT NULL,
    status       text        NOT NULL DEFAULT 'PENDING',
    input_params jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    completed_at timestamptz,
    error        text,
    CONSTRAINT mining_task_status_check
        CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED'))
);
-- Serves "list per tenant, newest first".
CREATE INDEX IF NOT EXISTS mining_task_tenant_created_idx
    ON synapse.mining_task (tenant_id, created_at DESC);
-- Serves the per-tenant RUNNING count behind the concurrency limit.
CREATE INDEX IF NOT EXISTS mining_task_running_idx
    ON synapse.mining_task (tenant_id) WHERE status = 'RUNNING';

CREATE TABLE IF NOT EXISTS synapse.mining_result (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id     uuid        NOT NULL REFERENCES synapse.mining_task (id) ON DELETE CASCADE,
    result_type text        NOT NULL,
    result_data jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS mining_result_task_idx ON synapse.mining_result (task_id);

CREATE TABLE IF NOT EXISTS weaver.datasource (
    id                uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    name              text        NOT NULL,
    ds_type           text        NOT NULL,
    connection_config bytea       NOT NULL,  -- format byte, key id, nonce, AES-GCM ciphertext
    status            text        NOT NULL DEFAULT 'ACTIVE',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT datasource_tenant_name_key UNIQUE (tenant_id, name),
    CONSTRAINT datasource_ds_type_check CHECK (ds_type IN ('postgres', 'mysql', 'oracle')),
    CONSTRAINT datasource_status_check CHECK (status IN ('ACTIVE', 'INACTIVE'))
);

CREATE TABLE IF NOT EXISTS weaver.glossary (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     text        NOT NULL,
    term          text        NOT NULL,
    definition    text,
    source_table  text,
    source_column text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT glossary_term_not_blank CHECK (btrim(term) <> '')
);
-- One entry per term and tenant, case-insensitively; also the upsert's conflict target.
CREATE UNIQUE INDEX IF NOT EXISTS glossary_tenant_term_uidx
    ON weaver.glossary (tenant_id, lower(term));
-- Prefix search (lower(term) LIKE 'abc%') in any database collation.
CREATE INDEX IF NOT EXISTS glossary_tenant_term_prefix_idx
    ON weaver.glossary (tenant_id, lower(term) text_pattern_ops);

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (3, 'synapse_weaver', '57f060f72f686d8a00fab2cff9aa4485c2f9827753fd41091d6a1bcab9a04c55') ON CONFLICT (version) DO NOTHING;

-- 007: the database, not the client, decides which tenants a Vision login reads (seed P0-02).
-- Safe to apply twice: psql -v ON_ERROR_STOP=1 -f sql/007_vision_tenant_binding.sql
--
-- vision.tenant_role binds a role to a tenant; a member of the role (USAGE: inherited rights)
-- reads that tenant through vision.case_stats. app.tenant_id may only narrow what a session
-- sees, never widen it: a bound role that sets another tenant gets no rows, an unbound reader
-- sees nothing. vision_admin (and superusers) see every tenant, or only app.tenant_id when set.
-- The column is a regrole (the role's OID): a dropped role's rows bind nobody, and a new role
-- reusing the name does not inherit them. Manage with `cdc vision bind/unbind` or plain SQL:
--   INSERT INTO vision.tenant_role VALUES ('vision_app', 'acme') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS vision.tenant_role (
    role_name regrole     NOT NULL,
    tenant_id text        NOT NULL CONSTRAINT tenant_role_tenant_check CHECK (tenant_id <> ''),
    bound_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, tenant_id)
);
REVOKE ALL ON TABLE vision.tenant_role FROM PUBLIC;

-- The same columns as 002's view; only who sees which rows changes. Each branch keeps a
-- tenant's read on the counters' primary key; the pg_has_role('vision_admin') tests are
-- one-time filters, so a session runs one branch.
CREATE OR REPLACE VIEW vision.case_stats WITH (security_barrier = true) AS
SELECT s.tenant_id,
       sum(s.n)::bigint AS total_cases,
       coalesce(sum(s.n) FILTER (WHERE s.status = 'IN_PROGRESS'), 0)::bigint AS active_cases,
       jsonb_object_agg(s.status, s.n) AS by_status
FROM (
    SELECT c.tenant_id, c.status, sum(c.n)::bigint AS n
    FROM (
        SELECT tenant_id, status, n FROM core.case_stats_shard
        WHERE pg_has_role('vision_admin', 'USAGE')
          AND nullif(current_setting('app.tenant_id', true), '') IS NULL
        UNION ALL
        SELECT tenant_id, status, n FROM core.case_stats_shard
        WHERE pg_has_role('vision_admin', 'USAGE')
          AND tenant_id = nullif(current_setting('app.tenant_id', true), '')
        UNION ALL
        SELECT tenant_id, status, n FROM core.case_stats_shard
        WHERE NOT pg_has_role('vision_admin', 'USAGE')
          AND tenant_id IN (
              SELECT b.tenant_id FROM vision.tenant_role b
              WHERE pg_has_role(b.role_name, 'USAGE')
                AND b.tenant_id = coalesce(nullif(current_setting('app.tenant_id', true), ''),
                                           b.tenant_id))
    ) c
    GROUP BY c.tenant_id, c.status
    HAVING sum(c.n) <> 0
) s
GROUP BY s.tenant_id;

-- cdc:record (everything above this line is checksummed; `cdc migrate --stamp` writes it)
INSERT INTO public.cdc_schema_migrations (version, name, checksum)
VALUES (7, 'vision_tenant_binding', '7a5f71bf97583ee1a4b3ceaeece85650ca0e0da5897696b69f024114486a94a0') ON CONFLICT (version) DO NOTHING;

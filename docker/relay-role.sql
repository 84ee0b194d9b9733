-- The relay's login role: REPLICATION, no superuser, only the privileges the relay needs.
-- psql -X -v ON_ERROR_STOP=1 -f docker/relay-role.sql, with CDC_RELAY_USER and
-- CDC_RELAY_PASSWORD in the environment (read with \getenv: never on a command line).
-- When the group role cdc_relay exists (sql/006_relay_role.sql) the role joins it;
-- before that migration, the same privileges are granted directly.
\getenv relay_user CDC_RELAY_USER
\getenv relay_password CDC_RELAY_PASSWORD
SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'relay_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'relay_user') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION NOSUPERUSER PASSWORD %L', :'relay_user',
              :'relay_password') \gexec
SELECT format('GRANT cdc_relay TO %I', :'relay_user')
 WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = 'cdc_relay') \gexec
SELECT format(g, :'relay_user')
  FROM unnest(ARRAY[
    'GRANT SELECT, UPDATE ON public.event_outbox TO %I',
    'GRANT SELECT, INSERT, UPDATE ON public.event_dead_letter TO %I',
    'GRANT USAGE ON SEQUENCE public.event_dead_letter_id_seq TO %I',
    'GRANT SELECT, INSERT, UPDATE, DELETE ON public.cdc_slot TO %I',
    'GRANT SELECT, INSERT, DELETE ON public.cdc_backfill TO %I',
    'GRANT SELECT ON public.cdc_schema_migrations TO %I'
  ]) AS g
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cdc_relay') \gexec

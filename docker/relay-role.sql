-- The relay's login role: a member of cdc_relay (sql/006_relay_role.sql: every privilege
-- `cdc run` uses) with REPLICATION (not inherited, so the login role carries it); no superuser.
-- psql -X -v ON_ERROR_STOP=1 -f docker/relay-role.sql after `cdc migrate`, with
-- CDC_RELAY_USER and CDC_RELAY_PASSWORD in the environment (\getenv: never on a command line).
\getenv relay_user CDC_RELAY_USER
\getenv relay_password CDC_RELAY_PASSWORD
SELECT format('CREATE ROLE %I LOGIN REPLICATION IN ROLE cdc_relay', :'relay_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'relay_user') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'relay_user', :'relay_password') \gexec
SELECT format('GRANT cdc_relay TO %I', :'relay_user') \gexec

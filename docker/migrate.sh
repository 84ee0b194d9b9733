#!/bin/sh
# The compose `migrate` step: apply sql/ as the owner (CDC_DATABASE_URL), then create or
# update the relay's least-privilege login role (PG* variables: the same server and owner).
set -eu
cdc migrate
psql -X -q -v ON_ERROR_STOP=1 -f /app/docker/relay-role.sql

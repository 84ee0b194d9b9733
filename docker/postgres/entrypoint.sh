#!/bin/sh
# Initialise $PGDATA on first start, include the relay's server settings, then run postgres.
# POSTGRES_PASSWORD sets the postgres password (scram-sha-256 over TCP); a test may set
# POSTGRES_HOST_AUTH_METHOD=trust instead. output_plugin_libraries is included only when this
# server knows that setting (Debian's 15 does; an unknown one would stop the server).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  pwfile=$(mktemp)
  if [ "$auth" != trust ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  else
    printf '%s' "${POSTGRES_PASSWORD:-postgres}" > "$pwfile"
  fi
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=peer --auth-host="$auth" \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  {
    echo "listen_addresses = '*'"
    echo "include '/etc/axiom-cdc/cdc-server.conf'"
    if postgres --describe-config | cut -f1 | grep -qx output_plugin_libraries; then
      echo "include '/etc/axiom-cdc/cdc-plugins.conf'"
    fi
  } >> "$PGDATA/postgresql.conf"
  echo "host all all all $auth" >> "$PGDATA/pg_hba.conf"
  echo "host replication all all $auth" >> "$PGDATA/pg_hba.conf"
fi
exec postgres -D "$PGDATA" "$@"

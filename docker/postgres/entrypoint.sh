#!/bin/sh
# Initialise $PGDATA on first start (password from POSTGRES_PASSWORD), include the relay's
# server settings, then run postgres. output_plugin_libraries is included only when this
# server knows that setting (Debian's 15 does; an unknown one would stop the server).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  {
    echo "listen_addresses = '*'"
    echo "include '/etc/axiom-cdc/cdc-server.conf'"
    if postgres --describe-config | cut -f1 | grep -qx output_plugin_libraries; then
      echo "include '/etc/axiom-cdc/cdc-plugins.conf'"
    fi
  } >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec postgres -D "$PGDATA" "$@"

# PostgreSQL 15 from Debian with wal2json and the server settings the relay needs.
# Build from the repository root: podman build -f docker/postgres.Dockerfile -t axiom-cdc-postgres .
# Same packages as scripts/bootstrap (postgresql-$PG_MAJOR, postgresql-$PG_MAJOR-wal2json).
# The settings come from cdc/pg/serverconf.py, rendered into docker/postgres/*.conf
# (`python -m cdc.pg.serverconf --write docker/postgres`; tests/test_deploy.py checks they match).
FROM debian:bookworm-slim
ARG PG_MAJOR=15
RUN apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" "postgresql-${PG_MAJOR}-wal2json" \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY docker/postgres/cdc-server.conf docker/postgres/cdc-plugins.conf /etc/axiom-cdc/
COPY --chmod=755 docker/postgres/entrypoint.sh /usr/local/bin/cdc-postgres
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]
ENTRYPOINT ["/usr/local/bin/cdc-postgres"]

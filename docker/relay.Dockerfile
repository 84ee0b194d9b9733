# The relay image: `cdc` with its Python dependencies and psql (for `cdc migrate`).
# Build from the repository root: docker build -f docker/relay.Dockerfile -t axiom-cdc-relay .
# Packages are the ones scripts/bootstrap installs for a client: postgresql-client-$PG_MAJOR,
# and the project's own dependency list from pyproject.toml (pip install .).
FROM python:3.11-slim-bookworm
ARG PG_MAJOR=15
RUN apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY sql ./sql
RUN pip install --no-cache-dir --disable-pip-version-check . \
 && useradd --system --home /app cdc
USER cdc
ENV CDC_METRICS_PORT=9108 CDC_MIGRATIONS_DIR=/app/sql
EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["cdc"]
CMD ["run"]

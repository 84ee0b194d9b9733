# The relay image: `cdc` in a venv with pinned dependencies (docker/constraints.txt), and psql
# (for `cdc migrate`). Build from the repository root:
#   podman build -f docker/relay.Dockerfile -t axiom-cdc-relay .
# Packages are the ones scripts/bootstrap installs for a client (postgresql-client-$PG_MAJOR);
# Python is Debian's 3.11. Runs as the numeric user 10001, fine with a read-only root.
FROM debian:bookworm-slim
ARG PG_MAJOR=15
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    "postgresql-client-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/axiom-cdc \
 && groupadd --system --gid 10001 cdc \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home cdc
WORKDIR /app
COPY docker/constraints.txt ./
# A build behind a TLS-inspecting proxy passes its CA bundle (mounted) as --build-arg PIP_CERT.
ARG PIP_CERT=""
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && /opt/axiom-cdc/bin/pip install --no-cache-dir --disable-pip-version-check -r constraints.txt
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY docker/migrate.sh docker/relay-role.sql ./docker/
RUN /opt/axiom-cdc/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
    -c constraints.txt . \
 && /opt/axiom-cdc/bin/pip check \
 && rm -rf /app/build /app/cdc /app/*.egg-info
USER 10001:10001
ENV PATH=/opt/axiom-cdc/bin:$PATH PYTHONDONTWRITEBYTECODE=1 \
    CDC_METRICS_PORT=9108 CDC_METRICS_ADDR=0.0.0.0
EXPOSE 9108
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["cdc", "healthcheck"]
ENTRYPOINT ["cdc"]
CMD ["run"]

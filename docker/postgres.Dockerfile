# PostgreSQL 15 with wal2json and logical decoding on.
# Same package as scripts/bootstrap: postgresql-$PG_MAJOR-wal2json (from the PGDG apt repository
# the official image already configures). Standard PostgreSQL has no output_plugin_libraries
# setting, so none is set here.
FROM postgres:15-bookworm
ARG PG_MAJOR=15
RUN apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}-wal2json" \
 && rm -rf /var/lib/apt/lists/*
# max_slot_wal_keep_size caps the WAL a stopped relay can pin; past it the slot is lost and
# is re-created with a backfill (docs/runbook.md §8).
CMD ["postgres", "-c", "wal_level=logical", "-c", "max_replication_slots=10", \
     "-c", "max_wal_senders=10", "-c", "max_slot_wal_keep_size=50GB", \
     "-c", "wal_sender_timeout=60s"]

"""axiom-cdc: stream `event_outbox` inserts from PostgreSQL logical replication to Redis."""

__version__ = "0.1.0"

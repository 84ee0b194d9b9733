"""Every privilege `cdc run` uses, in one place: doctor checks these, migration 006 grants them.

`tests/test_delivery.py::test_migration_006_grants_cdc_relay_exactly_what_doctor_checks`
checks that sql/006_relay_role.sql grants `cdc_relay` exactly this list, so the two cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP_ROLE = "cdc_relay"


@dataclass(frozen=True, slots=True)
class Need:
    """Privileges on one object."""

    kind: str  # "schema", "table" or "sequence"
    name: str  # schema.name (just the name for a schema)
    privileges: tuple[str, ...]

    def grant(self, privileges: list[str], role: str) -> str:
        """Return the GRANT giving `role` the missing `privileges` on this object."""
        on = {"schema": "SCHEMA ", "sequence": "SEQUENCE ", "table": ""}[self.kind]
        return f'GRANT {", ".join(privileges)} ON {on}{self.name} TO "{role}";'


def relay_needs(outbox_table: str) -> list[Need]:
    """Return what the relay needs with this outbox table (dead letters in its schema)."""
    schema = outbox_table.partition(".")[0]
    needs = [
        Need("schema", "public", ("USAGE",)),
        Need("table", outbox_table, ("SELECT", "UPDATE")),
        Need("table", f"{schema}.event_dead_letter", ("SELECT", "INSERT", "UPDATE")),
        Need("sequence", f"{schema}.event_dead_letter_id_seq", ("USAGE",)),
        Need("table", "public.cdc_slot", ("SELECT", "INSERT", "UPDATE", "DELETE")),
        Need("table", "public.cdc_backfill", ("SELECT", "INSERT", "DELETE")),
        Need("table", "public.cdc_redis_state", ("SELECT", "INSERT", "UPDATE")),
        Need("table", "public.cdc_schema_migrations", ("SELECT",)),
    ]
    if schema != "public":
        needs.insert(1, Need("schema", schema, ("USAGE",)))
    return needs


CHECK_SQL = {
    "schema": "SELECT has_schema_privilege(%s, %s, %s)",
    "table": "SELECT has_table_privilege(%s, %s, %s)",
    "sequence": "SELECT has_sequence_privilege(%s, %s, %s)",
}
EXISTS_SQL = {
    "schema": "SELECT to_regnamespace(%s) IS NOT NULL",
    "table": "SELECT to_regclass(%s) IS NOT NULL",
    "sequence": "SELECT to_regclass(%s) IS NOT NULL",
}

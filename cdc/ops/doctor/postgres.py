"""The PostgreSQL checks: server settings, the output plugin, slots and WAL senders, the slot."""

from __future__ import annotations

import os

import psycopg

from cdc.errors import CdcError
from cdc.ops.doctor import access
from cdc.ops.doctor.findings import FAIL, OK, WARN, Finding
from cdc.pg import db, privileges, serverconf, slots
from cdc.settings import Settings
from cdc.streams import redisstate

LAG_WARN_BYTES = 1 << 30
GUCS = (
    "wal_level", "max_replication_slots", "max_wal_senders", "max_slot_wal_keep_size",
    "output_plugin_libraries", "server_version_num",
)


def check_postgres(settings: Settings) -> list[Finding]:
    """Run the PostgreSQL checks."""
    dsn = settings.database_url
    try:
        conn = db.connect(dsn, autocommit=True)
    except CdcError as e:
        return [Finding("postgres", FAIL, str(e), e.hint)]
    with conn:
        rows = conn.execute(
            "SELECT name, setting, context FROM pg_settings WHERE name = ANY(%s)", (list(GUCS),)
        ).fetchall()
        gucs = {r[0]: r[1] for r in rows}
        context = {r[0]: r[2] for r in rows}
        major = int(gucs["server_version_num"]) // 10000
        out = [Finding("postgres", OK, f"connected to {db.redacted(dsn)} (PostgreSQL {major})")]
        out.append(_wal_level(gucs["wal_level"]))
        if "output_plugin_libraries" in gucs:
            out.append(_plugin_libs(gucs["output_plugin_libraries"], context))
        slot = slots.status(conn, settings.slot)
        free = _free_slots(conn, gucs, slot is not None)
        out += [free, _senders(conn, gucs, slot), _keep_size(gucs["max_slot_wal_keep_size"])]
        user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        out += [access.role(conn), *access.grants(conn, settings, user),
                access.migrations(dsn, settings, user)]
        out.append(_slot(settings.slot, slot))
        out.append(_redis_reset(conn, settings.slot))
        if gucs["wal_level"] == "logical" and free.level != FAIL:
            out.append(_probe(conn, major))
    return out


def _wal_level(level: str) -> Finding:
    if level == "logical":
        return Finding("wal_level", OK, "wal_level is logical")
    return Finding(
        "wal_level", FAIL, f"wal_level is {level}; logical decoding needs logical",
        "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
    )


def _plugin_libs(value: str, context: dict[str, str]) -> Finding:
    libs = serverconf.parse_list(value)  # a quoted "a,b" is one element, as the server reads it
    if "wal2json" in libs:
        return Finding("output_plugin_libraries", OK, "output_plugin_libraries allows wal2json")
    apply = (
        "restart PostgreSQL" if context["output_plugin_libraries"] == "postmaster"
        else "SELECT pg_reload_conf();"
    )
    return Finding(
        "output_plugin_libraries", FAIL,
        f"output_plugin_libraries is {value!r}: wal2json may not be used as an output plugin",
        f"{serverconf.alter_plugins(serverconf.with_wal2json(value))}; {apply}",
    )


def _free_slots(conn: db.Conn, gucs: dict[str, str], ours: bool) -> Finding:
    limit = int(gucs["max_replication_slots"])
    row = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()
    used = int(row[0]) if row else 0
    if ours or used < limit:
        return Finding("replication_slots", OK, f"{used} of {limit} replication slots in use")
    return Finding(
        "replication_slots", FAIL, f"all {limit} replication slots are in use",
        "drop an unused slot (SELECT slot_name, active FROM pg_replication_slots;"
        f" SELECT pg_drop_replication_slot('name');) or ALTER SYSTEM SET"
        f" max_replication_slots = {limit + 2}; then restart PostgreSQL",
    )


def _senders(conn: db.Conn, gucs: dict[str, str], slot: slots.SlotStatus | None) -> Finding:
    limit = int(gucs["max_wal_senders"])
    row = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
    used = int(row[0]) if row else 0
    running = slot is not None and slot.active
    if used < limit or running:
        return Finding("wal_senders", OK, f"{used} of {limit} WAL senders in use")
    return Finding(
        "wal_senders", FAIL, f"all {limit} WAL senders are in use",
        f"ALTER SYSTEM SET max_wal_senders = {limit + 2}; then restart PostgreSQL",
    )


def _keep_size(value: str) -> Finding:
    if value == "-1":
        return Finding(
            "max_slot_wal_keep_size", WARN,
            "max_slot_wal_keep_size is unlimited: a stopped relay pins WAL until the disk fills",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf();"
            " (size it below the free space of pg_wal; past it the slot is lost and"
            " must be re-created: see docs/runbook.md)",
        )
    return Finding("max_slot_wal_keep_size", OK, f"max_slot_wal_keep_size is {value} MB")


def _slot(name: str, slot: slots.SlotStatus | None) -> Finding:
    if slot is None:
        return Finding("slot", OK, f"slot {name} does not exist yet (`cdc run` creates it)")
    plugin, active, pid, wal_status, lag = (
        slot.plugin, slot.active, slot.active_pid, slot.wal_status, slot.lag_bytes
    )
    if plugin != "wal2json":
        return Finding(
            "slot", FAIL, f"slot {name} uses plugin {plugin}, not wal2json",
            "cdc slot drop --yes && cdc slot create",
        )
    if wal_status == "lost":
        return Finding(
            "slot", FAIL, f"slot {name} is lost: PostgreSQL removed WAL it still needed",
            "cdc slot drop --yes && cdc slot create (PENDING rows are backfilled;"
            " see docs/runbook.md, re-creating a lost slot)",
        )
    state = f"active (pid {pid})" if active else "inactive (no relay attached)"
    msg = f"slot {name} is {state}, wal_status {wal_status}, {lag} bytes behind"
    if wal_status == "unreserved" or (not active and (lag or 0) > LAG_WARN_BYTES):
        return Finding("slot", WARN, msg, "start the relay: cdc run (see docs/runbook.md)")
    return Finding("slot", OK, msg)


def _redis_reset(conn: db.Conn, slot: str) -> Finding:
    found = conn.execute("SELECT to_regclass('public.cdc_redis_state')").fetchone()
    if not found or found[0] is None:
        return Finding("redis_reset", OK, "no Redis reset recorded (cdc_redis_state absent)")
    try:
        reset = redisstate.unacknowledged(conn, slot)
    except psycopg.errors.InsufficientPrivilege:
        return Finding("redis_reset", WARN, "cannot read public.cdc_redis_state",
                       f"GRANT {privileges.GROUP_ROLE} TO current_user;")
    if reset is None:
        return Finding("redis_reset", OK, "no unacknowledged Redis reset")
    head, _, fix = reset.problem().partition("; republish them with ")
    return Finding("redis_reset", FAIL, head, fix)


def _probe(conn: db.Conn, major: int) -> Finding:
    """Create and drop a temporary wal2json slot: proves the plugin loads for this role."""
    name = f"cdc_doctor_{os.getpid()}"
    try:
        conn.execute("SET statement_timeout = '5s'")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json', true)", (name,))
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    except psycopg.errors.UndefinedFile as e:
        return Finding(
            "wal2json", FAIL, f"wal2json is not installed on the server: {e}",
            f"apt-get install postgresql-{major}-wal2json (or build it from"
            " github.com/eulerto/wal2json) on the PostgreSQL host",
        )
    except psycopg.errors.QueryCanceled:
        return Finding(
            "wal2json", WARN, "could not probe wal2json within 5 s: a long-running transaction"
            " delays slot creation", "find it: SELECT pid, xact_start, query FROM"
            " pg_stat_activity WHERE xact_start IS NOT NULL ORDER BY xact_start;",
        )
    except psycopg.Error as e:
        hint = e.diag.message_hint or ""
        if "may not be used as an output plugin" in str(e):  # the list is hidden from us
            hint = (f"as a superuser: {serverconf.alter_plugins()}; SELECT pg_reload_conf();"
                    " (keep any other library SHOW output_plugin_libraries lists)")
        msg = " ".join(str(e).split("\n")[0].split())
        return Finding("wal2json", FAIL, f"cannot create a wal2json slot: {msg}", hint)
    finally:
        conn.execute("RESET statement_timeout")
    return Finding("wal2json", OK, "wal2json loads: a temporary slot was created and dropped")

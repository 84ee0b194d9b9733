"""Preflight: every condition the relay needs, each finding with the exact fix.

PostgreSQL: wal_level, the output plugin (installed and allowed), free replication slots
and WAL senders, WAL retention for slots, the role's REPLICATION attribute and grants,
migrations, the slot itself. Redis: reachable, AOF persistence, an eviction policy that
cannot evict stream keys, consumer groups; on a Redis Cluster also cluster_state, replicas
per master, min-replicas-to-write, and AOF and eviction on every master.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import redis
from redis.cluster import RedisCluster

from cdc.errors import CdcError
from cdc.pg import db, migrate, privileges, serverconf
from cdc.settings import Settings
from cdc.streams import redisconn, redisstate

OK, WARN, FAIL = "ok", "warn", "FAIL"
LAG_WARN_BYTES = 1 << 30
GUCS = (
    "wal_level", "max_replication_slots", "max_wal_senders", "max_slot_wal_keep_size",
    "output_plugin_libraries", "server_version_num",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result; `fix` says exactly what to change."""

    check: str
    level: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the finding as a dict."""
        return asdict(self)


def diagnose(settings: Settings) -> list[Finding]:
    """Run every check against the configured PostgreSQL and Redis."""
    return [*check_postgres(settings), *check_redis(settings)]


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
        slot = _slot_row(conn, settings.slot)
        free = _free_slots(conn, gucs, slot is not None)
        out += [free, _senders(conn, gucs, slot), _keep_size(gucs["max_slot_wal_keep_size"])]
        user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        out += [_role(conn), *_grants(conn, settings, user), _migrations(dsn, settings, user)]
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


def _slot_row(conn: db.Conn, slot: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT plugin, active, active_pid, wal_status,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()


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


def _senders(conn: db.Conn, gucs: dict[str, str], slot: tuple[Any, ...] | None) -> Finding:
    limit = int(gucs["max_wal_senders"])
    row = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
    used = int(row[0]) if row else 0
    running = slot is not None and bool(slot[1])
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


def _role(conn: db.Conn) -> Finding:
    row = conn.execute(
        "SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    name, superuser, replication = row
    if superuser or replication:
        what = "superuser" if superuser else "REPLICATION"
        return Finding("role", OK, f"role {name} has {what}")
    return Finding(
        "role", FAIL, f"role {name} lacks REPLICATION (needed to create and stream the slot)",
        f'ALTER ROLE "{name}" WITH REPLICATION;',
    )


def _missing(conn: db.Conn, role: str, need: privileges.Need) -> list[str]:
    """Return the privileges of `need` that `role` lacks."""
    return [
        p for p in need.privileges
        if not conn.execute(privileges.CHECK_SQL[need.kind], (role, need.name, p)).fetchone()[0]  # type: ignore[index]
    ]


def _grants(conn: db.Conn, settings: Settings, user: str) -> list[Finding]:
    """Check every privilege the relay uses; name the one statement that gives them."""
    group = privileges.GROUP_ROLE
    row = conn.execute(
        "SELECT to_regrole(%s) IS NOT NULL, pg_has_role(current_user, oid, 'USAGE')"
        " FROM pg_roles WHERE rolname = %s", (group, group),
    ).fetchone()
    group_exists, member = (bool(row[0]), bool(row[1])) if row else (False, False)
    lacking: list[tuple[privileges.Need, list[str]]] = []
    for need in privileges.relay_needs(settings.outbox_table):
        exists = conn.execute(privileges.EXISTS_SQL[need.kind], (need.name,)).fetchone()
        if not exists or not exists[0]:
            continue  # the migrations check reports missing tables
        missing = _missing(conn, user, need)
        if missing:
            lacking.append((need, missing))
    if not lacking:
        return [Finding("grants", OK, f"role {user} has every privilege the relay uses")]
    what = "; ".join(f"{', '.join(m)} on {n.name}" for n, m in lacking)
    group_has_all = group_exists and all(
        not _missing(conn, group, n) for n, _ in lacking
    )
    if group_has_all and not member:
        fix = f'GRANT {group} TO "{user}";'
    elif member:  # the group role itself lost a privilege: give it back
        fix = " ".join(n.grant(_missing(conn, group, n) or m, group) for n, m in lacking)
    else:
        fix = " ".join(n.grant(m, user) for n, m in lacking)
        if not group_exists:
            fix += f" (or `cdc migrate`, which creates {group}, then GRANT {group} TO \"{user}\";)"
    return [Finding("grants", FAIL, f"role {user} lacks {what}", fix)]


def _migrations(dsn: db.Dsn, settings: Settings, user: str) -> Finding:
    try:
        states = migrate.status(dsn, settings.migrations_dir)
    except CdcError as e:
        return Finding("migrations", FAIL, str(e), e.hint or "cdc migrate")
    except psycopg.errors.InsufficientPrivilege as e:
        return Finding(
            "migrations", FAIL, f"cannot read the migration record: {e}",
            f'GRANT SELECT ON public.cdc_schema_migrations TO "{user}";',
        )
    pending = [s.migration.path.name for s in states if s.applied_at is None]
    if pending:
        return Finding(
            "migrations", FAIL, f"{len(pending)} migration(s) pending: {', '.join(pending)}",
            "cdc migrate",
        )
    return Finding("migrations", OK, f"all {len(states)} migrations applied")


def _slot(name: str, slot: tuple[Any, ...] | None) -> Finding:
    if slot is None:
        return Finding("slot", OK, f"slot {name} does not exist yet (`cdc run` creates it)")
    plugin, active, pid, wal_status, lag = slot
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


def check_redis(settings: Settings) -> list[Finding]:
    """Run the Redis checks."""
    url = settings.redis_url
    try:
        client = redisconn.connect(url)
    except CdcError as e:
        return [Finding("redis", FAIL, str(e), e.hint)]
    out: list[Finding] = []
    with client:
        try:
            version = str(client.info("server").get("redis_version", "?"))
            where = redisconn.redact_url(url)
            out.append(Finding("redis", OK, f"connected to {where} ({version})"))
            if int(version.split(".")[0]) < 7:
                out.append(Finding(
                    "redis_version", WARN, f"Redis {version}: consumer-group lag needs 7.0",
                    "upgrade Redis to 7 or later",
                ))
            if isinstance(client, RedisCluster):
                out += _cluster(client, settings)
            else:
                out += _redis_config(client)
            out.append(_groups(client, settings))
        except redis.RedisError as e:
            out.append(Finding("redis", FAIL, f"Redis check failed: {e}", "check CDC_REDIS_URL"))
    return out


def _cluster(rc: RedisCluster, settings: Settings) -> list[Finding]:
    """Check the cluster's state and, on every master, replicas, min-replicas-to-write, AOF."""
    out: list[Finding] = []
    state, lonely, unguarded = "", [], []
    for node in rc.get_primaries():  # type: ignore[no-untyped-call]
        r = node.redis_connection
        assert r is not None
        try:
            if not state:
                raw: Any = r.execute_command("CLUSTER", "INFO")
                lines = raw.items() if isinstance(raw, dict) else (
                    line.split(":", 1) for line in str(raw).splitlines() if ":" in line)
                state = next((str(v).strip() for k, v in lines if k == "cluster_state"), "?")
            replicas = int(r.info("replication").get("connected_slaves", 0))
            conf: Any = r.config_get("min-replicas-to-write")
            config = _redis_config(r)
        except (redis.RedisError, OSError) as e:
            out.append(Finding(
                f"redis@{node.name}", FAIL, f"master {node.name} does not answer: {e}",
                "start it again, or promote its replica (CLUSTER FAILOVER FORCE on it)",
            ))
            continue
        if replicas == 0:
            lonely.append(node.name)
        if int(conf.get("min-replicas-to-write", 0)) == 0:
            unguarded.append(node.name)
        out += [Finding(f"{f.check}@{node.name}", f.level, f"{node.name}: {f.message}", f.fix)
                for f in config]
    out.insert(0, Finding(
        "cluster_state", OK if state == "ok" else FAIL, f"cluster_state is {state or '?'}",
        "redis-cli --cluster check <any node>; bring the failed nodes back or"
        " redis-cli --cluster fix <any node> (every slot needs a master)",
    ))
    out.append(Finding(
        "cluster_replicas", FAIL if lonely else OK,
        f"master(s) without a replica: {', '.join(lonely)}: when one fails its slots are"
        " down and what it held is gone" if lonely else "every master has a replica",
        "add a replica to each: redis-cli --cluster add-node <new host:port> <master"
        " host:port> --cluster-slave",
    ))
    out.append(Finding(
        "min_replicas_to_write", WARN if unguarded else OK,
        f"min-replicas-to-write is 0 on {', '.join(unguarded)}: a master cut off from its"
        " replicas keeps taking writes that a failover then discards" if unguarded
        else "every master refuses writes without a replica (min-replicas-to-write)",
        "on each master: CONFIG SET min-replicas-to-write 1; CONFIG SET"
        " min-replicas-max-lag 10; CONFIG REWRITE",
    ))
    if settings.redis_min_replicas == 0:
        out.append(Finding(
            "redis_min_replicas", WARN, "CDC_REDIS_MIN_REPLICAS is 0: the relay confirms a"
            " batch a master holds alone; a failover can lose it",
            "set CDC_REDIS_MIN_REPLICAS=1 (docs/architecture.md, Past one Redis)",
        ))
    return out


def _redis_config(client: redis.Redis) -> list[Finding]:
    try:
        conf: dict[str, str] = client.config_get("*")  # type: ignore[assignment]
    except redis.ResponseError as e:
        return [Finding(
            "redis_config", WARN, f"cannot read Redis settings (CONFIG GET refused: {e})",
            "check by hand that appendonly is yes and maxmemory-policy is noeviction",
        )]
    out = []
    if conf.get("appendonly") != "yes":
        out.append(Finding(
            "redis_aof", FAIL, "AOF is off: a Redis restart loses entries the slot already"
            " confirmed", "CONFIG SET appendonly yes; CONFIG REWRITE (or appendonly yes in"
            " redis.conf)",
        ))
    elif conf.get("appendfsync") != "always":
        out.append(Finding(
            "redis_aof", WARN, f"AOF is on with appendfsync {conf.get('appendfsync')}: a host"
            " crash can lose the last second of entries the slot already confirmed",
            "CONFIG SET appendfsync always; CONFIG REWRITE (costs write throughput)",
        ))
    else:
        out.append(Finding("redis_aof", OK, "AOF is on with appendfsync always"))
    policy = str(conf.get("maxmemory-policy", ""))
    if policy.startswith("allkeys"):
        out.append(Finding(
            "redis_eviction", FAIL, f"maxmemory-policy {policy} can evict stream keys",
            "CONFIG SET maxmemory-policy noeviction; CONFIG REWRITE",
        ))
    else:
        limit = conf.get("maxmemory", "0")
        out.append(Finding(
            "redis_eviction", OK,
            f"maxmemory-policy {policy} never evicts stream keys (maxmemory {limit})",
        ))
    return out


def _groups(client: redisconn.Client, settings: Settings) -> Finding:
    want = set(settings.groups)
    missing = []
    for stream in settings.router.streams():
        have = set()
        if client.exists(stream):
            have = {str(g["name"]) for g in client.xinfo_groups(stream)}
        missing += [f"{stream}/{g}" for g in sorted(want - have)]
    if missing:
        return Finding(
            "consumer_groups", WARN, f"consumer groups missing: {', '.join(missing)}",
            "cdc run creates them at start (XGROUP CREATE ... MKSTREAM)",
        )
    return Finding("consumer_groups", OK, "every routed stream has its consumer groups")


def render(findings: list[Finding]) -> str:
    """Return the findings as aligned text, each fix under its finding."""
    lines = []
    for f in findings:
        lines.append(f"{f.level:5} {f.check:24} {f.message}")
        if f.fix and f.level != OK:
            lines.append(f"{'':30} fix: {f.fix}")
    fails = sum(f.level == FAIL for f in findings)
    warns = sum(f.level == WARN for f in findings)
    verdict = "ready" if not fails else "not ready"
    lines.append(f"doctor: {verdict}: {fails} problem(s), {warns} warning(s)")
    return "\n".join(lines)

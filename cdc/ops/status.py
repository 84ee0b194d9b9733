"""`cdc status`: one screen: relay up or down, slot lag, outbox, streams and groups, DLQ.

The relay is "up" when its slot is active (a walsender holds it). Each unhealthy
condition becomes a problem line naming the command that fixes it; PostgreSQL or Redis
being unreachable is one more problem, never an exception, so `--watch` keeps going.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from psycopg import sql
from redis.cluster import RedisCluster

from cdc.errors import CdcError
from cdc.ops import dlq
from cdc.pg import db, slots
from cdc.settings import Settings
from cdc.streams import groups, keys, redisconn, redisstate


@dataclass(frozen=True, slots=True)
class Group:
    """One consumer group of a stream (XINFO GROUPS)."""

    name: str
    consumers: int
    pending: int
    lag: int | None  # None when Redis cannot tell (entries deleted past the group)
    owner: str | None = None  # ordered consumers: who holds this partition's lease


@dataclass(slots=True)
class Stream:
    """One stream: length, age of its newest entry, groups."""

    name: str
    length: int
    last_entry_age_s: float | None
    groups: list[Group] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    """Everything `cdc status` shows."""

    taken_at: str
    slot_name: str
    slot: dict[str, Any] | None = None
    relay_up: bool = False
    last_reply_age_s: float | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None  # age of the oldest PENDING row (write-back mode)
    outbox: dict[str, int] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)
    dlq_length: int | None = None
    dead_letters_waiting: int | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Limits:
    """When lag counts as a problem."""

    max_lag_bytes: int = 256 << 20
    max_lag_seconds: float = 60.0


DEFAULT_LIMITS = Limits()


def snapshot(settings: Settings, limits: Limits = DEFAULT_LIMITS) -> Snapshot:
    """Gather the status from PostgreSQL and Redis."""
    snap = Snapshot(datetime.now(UTC).isoformat(timespec="seconds"), settings.slot)
    try:
        _postgres(settings, snap, limits)
    except (CdcError, psycopg.Error) as e:
        snap.problems.append(f"PostgreSQL: {_one_line(e)}")
    try:
        _redis(settings, snap)
    except CdcError as e:
        snap.problems.append(f"Redis: {_one_line(e)}")
    return snap


def _one_line(e: BaseException) -> str:
    return e.one_line() if isinstance(e, CdcError) else " ".join(str(e).split())


def _postgres(settings: Settings, snap: Snapshot, limits: Limits) -> None:
    with db.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '5s'")
        st = slots.status(conn, settings.slot)
        if st is None:
            snap.problems.append(
                f"slot {settings.slot} does not exist (fix: cdc slot create, or start cdc run)"
            )
        else:
            snap.slot = st.as_dict()
            snap.relay_up, snap.lag_bytes = st.active, st.lag_bytes
            if st.active_pid is not None:
                row = conn.execute(
                    "SELECT extract(epoch FROM now() - reply_time)::float8"
                    " FROM pg_stat_replication WHERE pid = %s", (st.active_pid,)
                ).fetchone()
                snap.last_reply_age_s = round(row[0], 3) if row and row[0] is not None else None
            _slot_problems(st, snap, limits)
        table = db.table_ident(settings.outbox_table)
        snap.outbox = dict(
            conn.execute(sql.SQL("SELECT status, count(*) FROM {} GROUP BY 1").format(table))
        )
        if settings.mark_published:
            row = conn.execute(
                sql.SQL(
                    "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
                    " FROM {} WHERE status = 'PENDING'"
                ).format(table)
            ).fetchone()
            snap.lag_seconds = round(row[0], 3) if row else None
            if snap.lag_seconds is not None and snap.lag_seconds > limits.max_lag_seconds:
                snap.problems.append(
                    f"the oldest PENDING row is {snap.lag_seconds:.0f} s old: delivery is"
                    " stalled or far behind (see docs/runbook.md, silently stalled pipeline)"
                )
        _reset_problems(conn, settings, snap)
        waiting, _ = dlq.counts(conn, settings)
        snap.dead_letters_waiting = waiting
        if waiting:
            snap.problems.append(
                f"{waiting} dead letter(s) not replayed (fix: cdc dlq list; cdc dlq replay)"
            )


def _reset_problems(conn: db.Conn, settings: Settings, snap: Snapshot) -> None:
    """Report a recorded Redis reset, and a Redis that lost its token since the relay saw it."""
    reset = redisstate.unacknowledged(conn, settings.slot)
    if reset is not None:
        snap.problems.append(reset.problem())
        return
    instance = redisstate.recorded(conn, settings.slot)
    if instance is None:
        return
    try:
        with redisconn.connect(settings.redis_url) as client:
            token = client.get(keys.REDIS_INSTANCE)
    except (CdcError, redis.RedisError):
        return  # the Redis section reports it
    if token != instance:
        snap.problems.append(
            "Redis lost its streams since the relay last connected (its instance token is"
            " gone or different): the relay records the reset when it reconnects; then"
            " republish with `cdc replay --since <oldest unconsumed> --until <reset>"
            " --skip-present --ack-reset`"
        )


def _slot_problems(st: slots.SlotStatus, snap: Snapshot, limits: Limits) -> None:
    if not st.active:
        snap.problems.append(
            f"relay is down: slot {st.slot_name} has no consumer (fix: start cdc run)"
        )
    if st.wal_status == "lost":
        snap.problems.append(
            f"slot {st.slot_name} is lost (fix: cdc slot drop --yes; cdc slot create)"
        )
    elif st.wal_status == "unreserved":
        snap.problems.append(
            f"slot {st.slot_name} is about to lose WAL (wal_status unreserved): start the relay"
        )
    if st.lag_bytes is not None and st.lag_bytes > limits.max_lag_bytes:
        snap.problems.append(
            f"slot lag {st.lag_bytes} bytes is over {limits.max_lag_bytes}: WAL is piling up"
        )


def _redis(settings: Settings, snap: Snapshot) -> None:
    client = redisconn.connect(settings.redis_url)
    now_ms = time.time() * 1000
    with client, redisconn.redis_errors("XINFO"):
        for name in settings.router.streams():
            if not client.exists(name):
                snap.streams.append(Stream(name, 0, None))
                continue
            info: Any = client.xinfo_stream(name)
            last = str(info.get("last-generated-id", "0-0")).split("-")[0]
            age = round((now_ms - int(last)) / 1000, 3) if info["length"] else None
            snap.streams.append(Stream(name, int(info["length"]), age, [
                Group(g.name, g.consumers, g.pending, g.lag, partition_owner(client, name, g.name))
                for g in groups.group_infos(client, name)
            ]))
        snap.dlq_length = int(client.xlen(keys.DLQ))


def partition_owner(
    client: redis.Redis | RedisCluster, stream: str, group: str
) -> str | None:
    """Return the ordered consumer leasing `stream` for `group` ("name, epoch N"), if any."""
    token = client.get(keys.lease(stream, group))
    if token is None:
        return None
    name, _, epoch = str(token).rpartition(" ")
    return f"{name}, epoch {epoch}"


def render(snap: Snapshot) -> str:
    """Return the snapshot as one screen of text."""
    lines = [f"axiom-cdc status at {snap.taken_at}   slot {snap.slot_name}"]
    if snap.slot is None:
        lines.append("relay    unknown (no slot)")
    else:
        reply = (
            f", last status {snap.last_reply_age_s:.1f} s ago"
            if snap.last_reply_age_s is not None else ""
        )
        state = f"UP (pid {snap.slot['active_pid']}{reply})" if snap.relay_up else "DOWN"
        lines.append(f"relay    {state}")
        secs = "n/a" if snap.lag_seconds is None else f"{snap.lag_seconds:.1f} s"
        lines.append(
            f"slot     confirmed {snap.slot['confirmed_flush_lsn']}  lag {snap.lag_bytes} bytes"
            f" / {secs}  wal_status {snap.slot['wal_status']}"
            f"  safe_wal_size {snap.slot['safe_wal_size']}"
        )
    counts = "  ".join(f"{k} {v}" for k, v in sorted(snap.outbox.items())) or "empty"
    lines.append(f"outbox   {counts}")
    lines.append("streams")
    for s in snap.streams:
        age = "-" if s.last_entry_age_s is None else f"{s.last_entry_age_s:.1f} s ago"
        lines.append(f"  {s.name:28} length {s.length:<10} newest entry {age}")
        for g in s.groups:
            lag = "?" if g.lag is None else str(g.lag)
            lines.append(
                f"    {g.name:26} pending {g.pending:<8} lag {lag:<8} consumers {g.consumers}"
                + (f"  owner {g.owner}" if g.owner else "")
            )
    lines.append(
        f"dlq      {keys.DLQ} length {snap.dlq_length}, "
        f"{snap.dead_letters_waiting} dead letter(s) not replayed"
    )
    lines.append("problems " + ("none" if not snap.problems else ""))
    lines += [f"  - {p}" for p in snap.problems]
    return "\n".join(lines)

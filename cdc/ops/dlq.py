"""Dead letters: list, show, replay onto their original streams, purge.

A replay checks the event again (size, route, contract) with the relay's rules, then
republishes it through lua/replay.lua under its stream's set (`keys.dlq_replayed`, in the
stream's hash slot; the one set `keys.DLQ_REPLAYED` of before is read too), so replaying
the same dead letter twice, or after a crash half-way, puts it on its stream once. Its
entry then leaves `axiom:dlq:events` (XDEL, idempotent: a crash before it leaves the copy
for the next replay or purge), the row is marked (`replayed_at`, `replay_count`) and the
outbox row becomes PUBLISHED.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from psycopg import sql

from cdc.errors import EventError
from cdc.pg import db
from cdc.pipeline.contracts import Registry, check_event
from cdc.pipeline.marks import id_list, mark_published
from cdc.settings import Settings
from cdc.streams import keys
from cdc.streams.redisconn import Client, redis_errors
from cdc.streams.republish import Republisher, Row

DLQ_TAG = "dlq"
_COLUMNS = (
    "id, event_id::text, event_type, tenant_id, aggregate_type, aggregate_id, {payload},"
    " stream, error, retry_count, created_at, dead_lettered_at, replayed_at, replay_count,"
    " created_at::text"
)
# An oversized dead letter keeps only a prefix: its payload is read from the outbox row.
_PAYLOAD = (
    "CASE WHEN NOT payload_truncated THEN payload::text ELSE (SELECT o.payload::text"
    " FROM {outbox} o WHERE o.id = event_id) END"
)  # NULL when that row is gone: such a dead letter cannot be replayed


def _columns(settings: Settings) -> sql.Composable:
    return sql.SQL(_COLUMNS).format(
        payload=sql.SQL(_PAYLOAD).format(outbox=db.table_ident(settings.outbox_table))
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One row of event_dead_letter."""

    id: int
    event_id: str
    event_type: str
    tenant_id: str
    aggregate_type: str
    aggregate_id: str
    payload: str | None  # None: cut at the size limit, and its outbox row is gone
    stream: str | None
    error: str
    retry_count: int
    created_at: datetime
    dead_lettered_at: datetime
    replayed_at: datetime | None
    replay_count: int
    created_text: str  # created_at as the relay's entries carry it

    def as_dict(self) -> dict[str, Any]:
        """Return the row as JSON-ready values (payload parsed)."""
        d = asdict(self)
        d["payload"] = orjson.loads(self.payload) if self.payload is not None else None
        del d["created_text"]
        for k in ("created_at", "dead_lettered_at", "replayed_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d

    def row(self, dlq_entry: str = "") -> Row:
        """Return the event as a row to republish (never one without its payload)."""
        assert self.payload is not None
        return Row(
            self.event_id, self.event_type, self.aggregate_type, self.aggregate_id,
            self.tenant_id, self.payload, self.created_text, dlq_entry,
        )


@dataclass(slots=True)
class ReplayReport:
    """What a DLQ replay did, per event id."""

    replayed: list[str] = field(default_factory=list)  # put on their streams now
    already: list[str] = field(default_factory=list)  # were already republished
    invalid: dict[str, str] = field(default_factory=dict)  # still fail: id -> reason
    missing: list[str] = field(default_factory=list)  # no such dead letter

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a dict."""
        return asdict(self)


def _table(settings: Settings) -> sql.Identifier:
    return db.table_ident(settings.outbox_table, "event_dead_letter")


def list_dead(
    conn: db.Conn, settings: Settings, *, replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    """Return dead letters, oldest first; only those not yet replayed unless `replayed`."""
    where = sql.SQL("" if replayed else " WHERE replayed_at IS NULL")
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {}{} ORDER BY id LIMIT %s").format(
            _columns(settings), _table(settings), where
        ),
        (limit,),
    ).fetchall()
    return [DeadLetter(*r) for r in rows]


def get(conn: db.Conn, settings: Settings, ident: str) -> DeadLetter | None:
    """Return the dead letter whose id (number) or event id (uuid) is `ident`."""
    if ident.isdigit():
        cond, value = sql.SQL("id = %s"), int(ident)
    else:
        try:
            value = str(uuid.UUID(ident))  # type: ignore[assignment]
        except ValueError:
            return None
        cond = sql.SQL("event_id = %s")
    row = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE {}").format(_columns(settings), _table(settings), cond),
        (value,),
    ).fetchone()
    return DeadLetter(*row) if row else None


def counts(conn: db.Conn, settings: Settings) -> tuple[int, int]:
    """Return (dead letters not yet replayed, all dead letters)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FILTER (WHERE replayed_at IS NULL), count(*) FROM {}").format(
            _table(settings)
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def dlq_entries(client: Client) -> dict[str, str]:
    """Return event id -> entry id for every entry of the DLQ stream."""
    found: dict[str, str] = {}
    last = "-"
    with redis_errors("XRANGE"):
        while True:
            chunk: list[Any] = client.xrange(keys.DLQ, min=last, count=1000)  # type: ignore[assignment]
            if last != "-":
                chunk = chunk[1:]
            if not chunk:
                return found
            for entry_id, fields in chunk:
                found.setdefault(str(fields.get("event_id", "")), str(entry_id))
            last = str(chunk[-1][0])


def _check(dead: DeadLetter, registry: Registry, max_bytes: int) -> None:
    """Raise EventError when the relay would still refuse the event (size, contract)."""
    assert dead.payload is not None
    check_event(registry, dead.event_type, dead.payload, max_bytes)


def replay(
    conn: db.Conn, client: Client, settings: Settings, idents: list[str] | None,
    *, validate: bool = True,
) -> ReplayReport:
    """Republish the given dead letters (None: every one not yet replayed); mark them."""
    report = ReplayReport()
    if idents is None:
        targets = list_dead(conn, settings, limit=1_000_000)
    else:
        targets = []
        for ident in idents:
            dead = get(conn, settings, ident)
            if dead is None:
                report.missing.append(ident)
            else:
                targets.append(dead)
    router = settings.router
    registry = Registry(unknown=settings.unknown_events)
    entries = dlq_entries(client) if targets else {}
    by_stream: dict[str, list[Row]] = {}
    for dead in targets:
        if dead.payload is None:
            report.invalid[dead.event_id] = (
                "its payload was over the size limit, only a prefix was kept, and its outbox"
                " row (the full payload) is gone"
            )
            continue
        try:
            stream = router.stream_for(dead.event_type, dead.tenant_id, dead.aggregate_id)
            if validate:
                _check(dead, registry, settings.max_event_bytes)
        except EventError as e:
            report.invalid[dead.event_id] = str(e)
            continue
        by_stream.setdefault(stream, []).append(dead.row(entries.get(dead.event_id, "")))
    pub = Republisher(
        client, set_key=keys.dlq_replayed, maxlen=settings.stream_maxlen, dlq_stream=keys.DLQ,
        legacy=keys.DLQ_REPLAYED,
    )
    for stream, rows in by_stream.items():
        added = set(pub.publish(stream, rows, DLQ_TAG))
        for r in rows:
            (report.replayed if r.event_id in added else report.already).append(r.event_id)
        _mark(conn, settings, stream, [r.event_id for r in rows], added)
    return report


def _mark(
    conn: db.Conn, settings: Settings, stream: str, ids: list[str], added: set[str]
) -> None:
    """Record that `ids` are on `stream`: dead-letter row replayed, outbox row PUBLISHED."""
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {} SET stream = %s, replayed_at = coalesce(replayed_at, now()),"
                " replay_count = replay_count"
                " + CASE WHEN event_id = ANY(%s::uuid[]) OR replayed_at IS NULL THEN 1 ELSE 0 END"
                " WHERE event_id = ANY(%s::uuid[])"
            ).format(_table(settings)),
            (stream, list(added), ids),
        )
        conn.execute(
            mark_published(settings.outbox_table, from_status=("DEAD_LETTER",)), (id_list(ids),)
        )


def purge(
    conn: db.Conn, client: Client, settings: Settings, *, replayed_only: bool = False
) -> tuple[int, int]:
    """Delete dead letters (all, or only replayed ones) and their DLQ entries.

    Return (rows deleted, stream entries deleted).
    """
    where = sql.SQL(" WHERE replayed_at IS NOT NULL" if replayed_only else "")
    with conn.transaction():
        deleted = conn.execute(
            sql.SQL("DELETE FROM {}{} RETURNING event_id::text, stream").format(
                _table(settings), where
            )
        ).fetchall()
        ids = [str(r[0]) for r in deleted]
        entries = dlq_entries(client)
        doomed = list(entries.values()) if not replayed_only else [
            entries[i] for i in ids if i in entries
        ]
        with redis_errors("XDEL"):
            removed = 0
            for i in range(0, len(doomed), 1000):
                removed += int(client.xdel(keys.DLQ, *doomed[i : i + 1000]))
            by_set: dict[str, list[str]] = {keys.DLQ_REPLAYED: ids}
            for event_id, stream in deleted:
                if stream:
                    by_set.setdefault(keys.dlq_replayed(stream), []).append(str(event_id))
            for set_key, members in by_set.items():
                for i in range(0, len(members), 1000):
                    client.srem(set_key, *members[i : i + 1000])
    return len(ids), removed

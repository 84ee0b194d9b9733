"""`cdc replay`: republish a time range of outbox rows for a consumer that lost data.

Rows are read in (created_at, id) order, one keyset page per short transaction, and put
back on their streams through lua/replay.lua under the run's set of each stream
(`keys.replay_run`, in the stream's hash slot; the run's one set of before,
`keys.replay_run_v1`, is read too), every entry tagged `replay=<run id>`. Rerunning with
the same `--id` resumes without duplicating anything; a new run id replays again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from cdc.errors import CdcError, EventError
from cdc.pg import db
from cdc.settings import Settings
from cdc.streams import keys, redisstate
from cdc.streams.redisconn import Client, redis_errors
from cdc.streams.republish import Republisher, Row

RUN_TTL_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Range:
    """Which outbox rows to replay: created_at in [since, until), optional type and tenant."""

    since: datetime
    until: datetime | None = None
    event_type: str | None = None
    tenant: str | None = None
    skip_present: bool = False  # leave out events already on their stream (after a reset)


@dataclass(slots=True)
class ReplayRun:
    """What one replay did."""

    replay_id: str
    rows: int = 0
    added: int = 0  # entries written now
    already: int = 0  # already republished by this run id
    unroutable: int = 0
    present: int = 0  # event ids found on the streams and left out (skip_present)
    by_stream: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the run as a dict."""
        return asdict(self)


def new_id() -> str:
    """Return a fresh replay run id (sortable by time)."""
    return "r" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def pages(conn: db.Conn, settings: Settings, rng: Range, size: int) -> Iterator[list[Row]]:
    """Yield the matching rows in (created_at, id) order, `size` at a time."""
    statuses = ["PUBLISHED"] if settings.mark_published else ["PUBLISHED", "PENDING"]
    conds = [sql.SQL("status = ANY(%(statuses)s)"), sql.SQL("created_at >= %(since)s")]
    if rng.until is not None:
        conds.append(sql.SQL("created_at < %(until)s"))
    if rng.event_type is not None:
        conds.append(sql.SQL("event_type = %(event_type)s"))
    if rng.tenant is not None:
        conds.append(sql.SQL("tenant_id = %(tenant)s"))
    query = sql.SQL(
        "SELECT id::text, event_type, aggregate_type, aggregate_id, tenant_id, payload::text,"
        " created_at::text AS created_text, created_at AS created_ts FROM {} WHERE {}"
        " AND (created_at, id) > (%(after_ts)s, %(after_id)s::uuid)"
        " ORDER BY created_at, id LIMIT %(size)s"
    ).format(db.table_ident(settings.outbox_table), sql.SQL(" AND ").join(conds))
    params: dict[str, Any] = {
        "statuses": statuses, "since": rng.since, "until": rng.until,
        "event_type": rng.event_type, "tenant": rng.tenant, "size": size,
        "after_ts": rng.since, "after_id": "00000000-0000-0000-0000-000000000000",
    }
    while True:
        with conn.transaction():
            rows = conn.execute(query, params).fetchall()
        if not rows:
            return
        yield [Row(*r[:7]) for r in rows]
        params["after_ts"], params["after_id"] = rows[-1][7], rows[-1][0]


def replay(
    conn: db.Conn, client: Client | None, settings: Settings, rng: Range,
    *, replay_id: str, dry_run: bool = False,
) -> ReplayRun:
    """Republish the rows in `rng` (or only count them with `dry_run`)."""
    run = ReplayRun(replay_id)
    router = settings.router
    pub = None
    if not dry_run:
        assert client is not None
        pub = Republisher(
            client, set_key=lambda stream: keys.replay_run(replay_id, stream),
            maxlen=settings.stream_maxlen, ttl_s=RUN_TTL_S, legacy=keys.replay_run_v1(replay_id),
        )
    present = None
    if pub is not None and rng.skip_present:
        assert client is not None
        wait_caught_up(conn, settings)
        present = _Present(client, router.streams(), replay_id)
    for page in pages(conn, settings, rng, settings.batch_size):
        if present is not None:
            present.refresh()
            run.present = present.seen
        run.rows += len(page)
        by_stream: dict[str, list[Row]] = {}
        for row in page:
            try:
                by_stream.setdefault(
                    router.stream_for(row.event_type, row.tenant_id, row.aggregate_id), []
                ).append(row)
            except EventError:
                run.unroutable += 1
        for stream, rows in by_stream.items():
            run.by_stream[stream] = run.by_stream.get(stream, 0) + len(rows)
            if pub is not None:
                added = len(pub.publish(stream, rows, replay_id))
                run.added += added
                run.already += len(rows) - added
    return run


class _Present:
    """The event ids on `streams`, put into a replay run's set, read on from where it left.

    After a Redis reset the streams hold only what the relay published since. Read again
    before each page, this keeps a replay of the lost window from adding anything the relay
    put back, also while it keeps publishing: it marks a row PUBLISHED only after Redis
    acknowledged the row's entry, so a PUBLISHED row is on its stream by then.
    """

    def __init__(self, client: Client, streams: list[str], replay_id: str) -> None:
        self._client = client
        self._replay_id = replay_id
        self._after = dict.fromkeys(streams, "-")
        self.seen = 0

    def refresh(self) -> None:
        """Add the ids of the entries added since the last call."""
        with redis_errors("XRANGE"):
            for stream, last in self._after.items():
                while True:
                    chunk: Any = self._client.xrange(stream, min=last, count=1000)
                    if last != "-":
                        chunk = chunk[1:]
                    if not chunk:
                        break
                    ids = [str(f["event_id"]) for _, f in chunk if f.get("event_id")]
                    if ids:
                        set_key = keys.replay_run(self._replay_id, stream)
                        self._client.sadd(set_key, *ids)
                        self._client.expire(set_key, RUN_TTL_S)
                        self.seen += len(ids)
                    last = self._after[stream] = str(chunk[-1][0])


def wait_caught_up(conn: db.Conn, settings: Settings, *, timeout: float = 60.0) -> None:
    """Wait until the relay re-published everything after an unacknowledged Redis reset."""
    reset = redisstate.unacknowledged(conn, settings.slot)
    deadline = time.monotonic() + timeout
    while reset is not None and not redisstate.caught_up(conn, settings.slot, reset):
        if time.monotonic() > deadline:
            raise CdcError(
                f"the relay has not yet confirmed slot {settings.slot} past the Redis reset"
                f" ({reset.lsn}): events it will put back could be replayed twice",
                hint="start the relay (or let it catch up: `cdc status`), then run again",
            )
        time.sleep(0.2)

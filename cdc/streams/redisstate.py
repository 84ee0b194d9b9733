"""Notice a Redis that lost what it acknowledged: emptied, or replaced by another instance.

The relay writes a random token once into each Redis (`keys.REDIS_INSTANCE`, SET NX) and
records it per slot in `public.cdc_redis_state`. At every session start the two are
compared: a Redis without the token, or with another one, is a reset. The reset is
recorded (time, count), logged, exported as `core_relay_redis_reset`, and shown by
`cdc status` and `cdc doctor` until an operator republishes what was lost and
acknowledges it (`cdc replay --since ... --until <reset> --skip-present --ack-reset`).

The relay keeps publishing meanwhile: new events land once (the marks start afresh in the
new Redis), and it re-publishes from the slot's confirmed position, which may be before
events the old Redis had. `--skip-present` waits until the slot is confirmed past the WAL
position of the reset (then every such event is back on its stream), and leaves out every
event already on a stream, so nothing the relay put back is added twice.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from cdc.pg import db

log = logging.getLogger(__name__)


def new_token() -> str:
    """Return a fresh instance token."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Reset:
    """An unacknowledged Redis reset."""

    reset_at: datetime
    count: int
    lsn: str | None  # the WAL position when it was found

    def problem(self) -> str:
        """Return the status/doctor line naming the recovery."""
        at = self.reset_at.isoformat()
        return (
            f"Redis lost its streams at {at} (emptied or replaced; {self.count} time(s)):"
            f" entries it had acknowledged are gone; republish them with `cdc replay --since"
            f" <oldest unconsumed> --until {at} --skip-present --ack-reset`"
        )


RECORDED_SQL = "SELECT instance FROM public.cdc_redis_state WHERE slot_name = %s"


def recorded(conn: db.Conn, slot: str) -> str | None:
    """Return the token of the Redis the slot's relay last published to, if any."""
    row = conn.execute(RECORDED_SQL, (slot,)).fetchone()
    return str(row[0]) if row else None


def observe(conn: db.Conn, slot: str, token: str) -> Reset | None:
    """Compare Redis' token with the slot's record; record a reset; return any unacknowledged."""
    with conn.transaction():
        row = conn.execute(RECORDED_SQL + " FOR UPDATE", (slot,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO public.cdc_redis_state (slot_name, instance) VALUES (%s, %s)"
                " ON CONFLICT (slot_name) DO NOTHING", (slot, token),
            )
        elif row[0] != token:
            at = conn.execute(
                "UPDATE public.cdc_redis_state SET instance = %s, seen_at = now(),"
                " reset_at = now(), reset_lsn = pg_current_wal_lsn(),"
                " reset_count = reset_count + 1, acknowledged_at = NULL"
                " WHERE slot_name = %s RETURNING reset_at", (token, slot),
            ).fetchone()
            when = at[0].isoformat() if at else "now"
            log.error(
                "Redis lost its state: the instance token of slot %s is gone (Redis emptied or"
                " replaced); entries it acknowledged earlier are lost. Publishing continues"
                " from the slot's position (fix: `cdc replay --since <oldest unconsumed>"
                " --until %s --skip-present --ack-reset`)", slot, when,
            )
    return unacknowledged(conn, slot)


def unacknowledged(conn: db.Conn, slot: str) -> Reset | None:
    """Return the slot's reset that no operator has acknowledged yet, if any."""
    row = conn.execute(
        "SELECT reset_at, reset_count, reset_lsn::text FROM public.cdc_redis_state"
        " WHERE slot_name = %s AND reset_at IS NOT NULL AND acknowledged_at IS NULL", (slot,),
    ).fetchone()
    return Reset(row[0], int(row[1]), row[2]) if row else None


def caught_up(conn: db.Conn, slot: str, reset: Reset) -> bool:
    """Tell whether the slot is confirmed past the reset (everything after is back)."""
    if reset.lsn is None:
        return True
    row = conn.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
        " WHERE slot_name = %s", (reset.lsn, slot),
    ).fetchone()
    return bool(row and row[0])


def acknowledge(conn: db.Conn, slot: str) -> bool:
    """Mark the slot's reset as dealt with; return whether there was one."""
    row = conn.execute(
        "UPDATE public.cdc_redis_state SET acknowledged_at = now() WHERE slot_name = %s"
        " AND reset_at IS NOT NULL AND acknowledged_at IS NULL RETURNING 1", (slot,),
    ).fetchone()
    return row is not None

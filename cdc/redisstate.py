"""Notice a Redis that lost what it acknowledged: emptied, or replaced by another instance.

The relay writes a random token once into each Redis (`keys.REDIS_INSTANCE`, SET NX) and
records it per slot in `public.cdc_redis_state`. At every session start the two are
compared: a Redis without the token, or with another one, is a reset. The reset is
recorded (time, count), logged, exported as `core_relay_redis_reset`, and shown by
`cdc status` and `cdc doctor` until an operator republishes what was lost and
acknowledges it (`cdc replay --since ... --until <reset> --skip-present --ack-reset`).

The relay keeps publishing meanwhile: new events land once (the marks start afresh in the
new Redis); `--skip-present` keeps the replay from adding any event the relay already
put back.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from cdc import db

log = logging.getLogger(__name__)


def new_token() -> str:
    """Return a fresh instance token."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Reset:
    """An unacknowledged Redis reset."""

    reset_at: datetime
    count: int

    def problem(self) -> str:
        """Return the status/doctor line naming the recovery."""
        at = self.reset_at.isoformat(timespec="seconds")
        return (
            f"Redis lost its streams at {at} (emptied or replaced; {self.count} time(s)):"
            f" entries it had acknowledged are gone; republish them with `cdc replay --since"
            f" <oldest unconsumed> --until {at} --skip-present --ack-reset`"
        )


def observe(conn: db.Conn, slot: str, token: str) -> Reset | None:
    """Compare Redis' token with the slot's record; record a reset; return any unacknowledged."""
    with conn.transaction():
        row = conn.execute(
            "SELECT instance FROM public.cdc_redis_state WHERE slot_name = %s FOR UPDATE",
            (slot,),
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO public.cdc_redis_state (slot_name, instance) VALUES (%s, %s)"
                " ON CONFLICT (slot_name) DO NOTHING", (slot, token),
            )
        elif row[0] != token:
            conn.execute(
                "UPDATE public.cdc_redis_state SET instance = %s, seen_at = now(),"
                " reset_at = now(), reset_count = reset_count + 1, acknowledged_at = NULL"
                " WHERE slot_name = %s", (token, slot),
            )
            log.error(
                "Redis lost its state: the instance token of slot %s is gone (Redis emptied or"
                " replaced); entries it acknowledged earlier are lost. Publishing continues"
                " from the slot's position (fix: `cdc replay --since <oldest unconsumed>"
                " --until now --skip-present --ack-reset`)", slot,
            )
        else:
            conn.execute(
                "UPDATE public.cdc_redis_state SET seen_at = now() WHERE slot_name = %s", (slot,)
            )
    return unacknowledged(conn, slot)


def unacknowledged(conn: db.Conn, slot: str) -> Reset | None:
    """Return the slot's reset that no operator has acknowledged yet, if any."""
    row = conn.execute(
        "SELECT reset_at, reset_count FROM public.cdc_redis_state WHERE slot_name = %s"
        " AND reset_at IS NOT NULL AND acknowledged_at IS NULL", (slot,),
    ).fetchone()
    return Reset(row[0], int(row[1])) if row else None


def acknowledge(conn: db.Conn, slot: str) -> bool:
    """Mark the slot's reset as dealt with; return whether there was one."""
    row = conn.execute(
        "UPDATE public.cdc_redis_state SET acknowledged_at = now() WHERE slot_name = %s"
        " AND reset_at IS NOT NULL AND acknowledged_at IS NULL RETURNING 1", (slot,),
    ).fetchone()
    return row is not None

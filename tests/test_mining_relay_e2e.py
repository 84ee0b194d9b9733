"""End to end: a completed mining task reaches axiom:core:events through the real relay."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import cast

import orjson
import pytest
import redis
from psycopg_pool import ConnectionPool

from cdc.domain.stores.base import Pool
from cdc.domain.stores.mining import MiningStore
from cdc.settings import Settings
from cdc.streams import keys


@pytest.fixture
def pool(pg_dsn: str) -> Iterator[Pool]:
    with ConnectionPool(pg_dsn, min_size=1, max_size=2, open=True, timeout=20) as p:
        yield p


def cdc(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CDC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CDC_REDIS_URL": settings.redis_url.get_secret_value(),
        "CDC_SLOT": settings.slot,
    }
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args], capture_output=True, text=True, env=env, timeout=90
    )


def test_completed_task_reaches_core_events_and_rolled_back_one_does_not(
    settings: Settings, pool: Pool, rds: redis.Redis
) -> None:
    created = cdc(settings, "slot", "create")
    assert created.returncode == 0, created.stderr
    mining = MiningStore(pool)
    kept = mining.create("t1", "discover", {"log": "orders"})
    mining.start("t1", kept.id)
    result = mining.complete("t1", kept.id, result_type="model", result_data={"nodes": 3})
    lost = mining.create("t1", "discover")
    mining.start("t1", lost.id)
    with pytest.raises(RuntimeError), pool.connection() as conn:
        mining.complete("t1", lost.id, result_type="model", result_data={}, conn=conn)
        raise RuntimeError("crash before commit")

    relay = cdc(settings, "run", "--once")
    assert relay.returncode == 0, relay.stderr

    entries = cast(list[tuple[str, dict[str, str]]], rds.xrange(keys.CORE_EVENTS))
    completed = [f for _, f in entries if f.get("event_type") == "MINING_TASK_COMPLETED"]
    assert len(completed) == 1, entries
    fields = completed[0]
    assert fields["aggregate_type"] == "mining_task"
    assert fields["aggregate_id"] == str(kept.id) and fields["tenant_id"] == "t1"
    payload = orjson.loads(fields["payload"])
    assert payload["task_id"] == str(kept.id) and payload["result_id"] == str(result.id)
    assert fields["idempotency_key"] == f"mining_task:{kept.id}:completed"
    assert not [f for _, f in entries if str(lost.id) in f.get("payload", "")]

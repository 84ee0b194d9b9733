"""One ordered consumer process for tests/test_ordered_consumer.py.

    python -m tests.ordered_worker REDIS_URL GROUP NAME STATS_PATH LEASE_MS SLEEP_S

Each handled entry is recorded into the list `rec:handled` by a script that first checks the
entry's lease token (`Entry.fence`) against the partition's lease: a handler call made after
the lease was lost is recorded in `rec:stale` instead. SIGTERM stops it; its stats go to
STATS_PATH as JSON.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import orjson
import redis

from cdc.commands import stop_on_signals
from cdc.consumers.worker import Consumer, Entry
from cdc.streams import keys

ROUTE = "axiom:core:events"
RECORD_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('RPUSH', KEYS[2], ARGV[2])
end
redis.call('RPUSH', KEYS[3], ARGV[2])
return 0
"""


def main() -> None:
    """Consume ROUTE's partitions as NAME until SIGTERM, recording each handling."""
    url, group, name, stats_path, lease_ms, sleep_s = sys.argv[1:7]
    stop = stop_on_signals()
    r = redis.Redis.from_url(url, decode_responses=True)
    record = r.register_script(RECORD_LUA)
    pause = float(sleep_s)

    def handle(e: Entry) -> None:
        seq = orjson.loads(e.fields["payload"])["seq"]
        row = orjson.dumps([name, e.stream, e.id, e.fields["aggregate_id"], seq, e.fence,
                            time.monotonic(), e.deliveries]).decode()
        record(keys=[keys.lease(e.stream, group), "rec:handled", "rec:stale"],
               args=[e.fence, row])
        if pause:
            time.sleep(pause)

    c = Consumer(redis_url=url, group=group, streams=[ROUTE], handler=handle, consumer=name,
                 count=50, block_ms=200, claim_idle_ms=200, start_id="0", ordered=True,
                 lease_ms=int(lease_ms), stop=stop)
    try:
        stats = c.run()
    finally:
        c.close()
    with open(stats_path, "wb") as f:
        f.write(orjson.dumps(dataclasses.asdict(stats)))


if __name__ == "__main__":
    main()

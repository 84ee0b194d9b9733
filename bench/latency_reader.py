"""A separate XREAD BLOCK client: record when each `seq` becomes readable (time.time()).

python -m bench.latency_reader REDIS_URL STREAM COUNT OUT.json
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
import redis


def main() -> None:
    url, stream, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = redis.Redis.from_url(url)
    seen: dict[int, float] = {}
    last = "0-0"
    deadline = time.time() + 600
    print("ready", flush=True)
    while len(seen) < count and time.time() < deadline:
        got: Any = client.xread({stream: last}, block=1000, count=1000)
        now = time.time()
        for _, entries in got or []:
            for eid, fields in entries:
                seen[int(orjson.loads(fields[b"payload"])["seq"])] = now
                last = eid
    with open(out, "wb") as f:
        f.write(orjson.dumps(seen, option=orjson.OPT_NON_STR_KEYS))


if __name__ == "__main__":
    main()

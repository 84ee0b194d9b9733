"""The relay's instructions per event under callgrind, code trees side by side.

Wall-clock figures on a shared VM drift by 2x between runs; instruction counts do not (the
same run twice differs by ~30 an event). For each tree (a checkout of this project, e.g. a
`git worktree`), on throwaway local servers: the tree's own `cdc migrate`, a slot created with
the tree's own code, a backlog committed, then `cdc run --once` (that tree's code, this
interpreter) under `valgrind --tool=callgrind` drains it into Redis. Two backlogs, `--events
SMALL LARGE`; (instructions(LARGE) - instructions(SMALL)) / (LARGE - SMALL) is the count per
event, start-up cancelled. Needs valgrind (`apt-get install valgrind`); ~2 min a tree.

    .venv/bin/python -m bench.bench_instructions TREE [TREE ...] [--write-back on|off]
        [--schema as-migrated|no-trace] [--events 2000 20000]

`--schema no-trace` drops the trace context columns (sql/009) before the backlog, to measure
what they cost. The first tree is the reference of the ratios printed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import redis

from bench.bench_relay import INSERT, relay_env
from devkit.localservers import LocalPostgres, LocalRedis

# Run by the tree's own code: its slots module sits in cdc.pg (now) or cdc (before issue 14).
CREATE_SLOT = """
import sys
from cdc.settings import Settings
try:
    from cdc.pg import slots
except ImportError:
    from cdc import slots
slots.create(Settings(database_url=sys.argv[1], slot=sys.argv[2]))
"""


def tree_env(tree: Path, dsn: str, redis_url: str, slot: str, write_back: bool) -> dict[str, str]:
    """Return bench_relay's relay environment, running `tree`'s code."""
    env = relay_env(dsn, redis_url, slot, write_back)
    env.update(PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    return env


def drain(tree: Path, dsn: str, redis_url: str, n: int, slot: str, write_back: bool) -> int:
    """Commit `n` events behind a new slot, drain them under callgrind; return instructions."""
    env = tree_env(tree, dsn, redis_url, slot, write_back)
    subprocess.run([sys.executable, "-c", CREATE_SLOT, dsn, slot], env=env, cwd=tree,
                   check=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, n, 1000):
            conn.execute(INSERT, (f"{slot}-{start}-", min(1000, n - start)))
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "cdc", "run", "--once"],
        env=env, cwd=tree, capture_output=True, text=True,
    )
    got = int(r.xlen("axiom:core:events"))
    r.close()
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None or got != n:
        raise SystemExit(f"{tree}: drain failed (exit {run.returncode}, {got}/{n} entries):"
                         f"\n{run.stderr[-2000:]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute("TRUNCATE event_outbox")
    return int(found.group(1))


def per_event(tree: Path, events: tuple[int, int], write_back: bool, schema: str) -> float:
    """Return the relay's instructions per event for `tree` on fresh servers."""
    with LocalPostgres() as pg, LocalRedis() as rd:
        env = tree_env(tree, pg.dsn, rd.url, "unused", write_back)
        subprocess.run([sys.executable, "-m", "cdc", "migrate"], env=env, cwd=tree,
                       check=True, capture_output=True)
        if schema == "no-trace":
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE event_outbox DROP COLUMN IF EXISTS traceparent,"
                             " DROP COLUMN IF EXISTS tracestate")
        small, large = (drain(tree, pg.dsn, rd.url, n, f"bench_ins_{i}", write_back)
                        for i, n in enumerate(events))
    return (large - small) / (events[1] - events[0])


def main() -> None:
    """Print each tree's instructions per event and its ratio to the first tree."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--write-back", choices=("on", "off"), default="off")
    ap.add_argument("--schema", choices=("as-migrated", "no-trace"), default="as-migrated")
    ap.add_argument("--events", type=int, nargs=2, default=(2000, 20000))
    args = ap.parse_args()
    counts: list[float] = []
    for tree in args.trees:
        counts.append(per_event(tree.resolve(), tuple(args.events), args.write_back == "on",
                                args.schema))
        print(f"{tree}: {counts[-1]:,.0f} instructions/event"
              f" ({counts[-1] / counts[0]:.3f} x {args.trees[0]}); write-back"
              f" {args.write_back}, schema {args.schema}", flush=True)


if __name__ == "__main__":
    main()

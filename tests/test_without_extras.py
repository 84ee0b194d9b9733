"""The package without its optional extras: `[otel]` (opentelemetry) and `[sqlalchemy]` absent.

The test environment has both installed, so each check runs in a child interpreter whose
import system refuses them, as on a machine that never installed them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import redis

from cdc.settings import Settings
from cdc.streams import keys
from tests.relayutil import relay_env

ABSENT = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("opentelemetry", "sqlalchemy"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
"""

IMPORTS_AND_EMIT = ABSENT + """
import importlib, pkgutil
import psycopg
import cdc
failed = {}
for m in pkgutil.walk_packages(cdc.__path__, "cdc."):
    if m.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(m.name)
    except ModuleNotFoundError as e:
        failed[m.name] = str(e)
import json
print(json.dumps(sorted(failed.items())))
from cdc.observe import tracing
assert tracing.current() == {}
with tracing.consumer_span({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
                           stream="s", entry_id="1-0"):
    pass
from cdc.domain import outbox
with psycopg.connect(sys.argv[1]) as conn:
    outbox.emit(conn, outbox.Event(
        tenant_id="acme", aggregate_type="case", aggregate_id="c1", event_type="CASE_CREATED",
        payload={"case_id": "c1", "status": "OPEN"}))
print("emitted")
"""

CLI = ABSENT + """
import runpy, sys
sys.argv = ["cdc", *sys.argv[1:]]
runpy.run_module("cdc", run_name="__main__", alter_sys=True)
"""


def without_extras(script: str, *args: str, env: dict[str, str] | None = None,
                   ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_without_the_extras_every_module_imports_emit_writes_and_the_relay_runs(
    settings: Settings, rds: redis.Redis
) -> None:
    env = relay_env(settings)
    assert without_extras(CLI, "slot", "create", env=env).returncode == 0
    dsn = settings.database_url.get_secret_value()
    done = without_extras(IMPORTS_AND_EMIT, dsn, env=env)
    assert done.returncode == 0, done.stderr
    imports, emitted = done.stdout.splitlines()
    # Only the SQLAlchemy adapter needs its extra, and its error says which one to install.
    (name, error), = json.loads(imports)
    assert name == "cdc.domain.sqla" and "pip install 'axiom-cdc[sqlalchemy]'" in error
    assert emitted == "emitted"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT aggregate_id, traceparent, tracestate"
                            " FROM event_outbox").fetchall() == [("c1", None, None)]
    run = without_extras(CLI, "run", "--once", env=env)
    assert run.returncode == 0, run.stderr
    (_, fields), = rds.xrange(keys.CORE_EVENTS)
    assert fields["aggregate_id"] == "c1" and "traceparent" not in fields

"""The architecture doc's Watch CEP consumer example, sync and asyncio forms, run as written."""

from __future__ import annotations

import asyncio
import re
import textwrap
import threading
from pathlib import Path
from typing import Any

import psycopg

from cdc.domain import outbox
from cdc.settings import Settings
from tests.relayutil import cdc, wait_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def example() -> str:
    """Return the doc's code block that follows "The example Watch CEP consumer"."""
    found = re.search(r"The example Watch CEP consumer.*?```python\n(.*?)```", DOC.read_text(),
                      flags=re.S)
    assert found, "docs/architecture.md lost its Watch CEP example"
    return found.group(1)


def alerts(settings: Settings, first: int) -> None:
    """Commit three HIGH alerts of watch w1 and relay them to axiom:watches."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        for n in range(first, first + 3):
            outbox.emit(conn, outbox.Event(
                tenant_id="acme", aggregate_type="watch", aggregate_id="w1",
                event_type="WATCH_ALERT_TRIGGERED",
                payload={"watch_id": "w1", "alert_id": f"a{n}", "severity": "HIGH"}))
        conn.commit()
    assert cdc(settings, "run", "--once").returncode == 0


def test_the_watch_cep_example_runs_as_the_doc_shows_in_both_forms(settings: Settings) -> None:
    assert cdc(settings, "slot", "create").returncode == 0
    alerts(settings, 1)
    ns: dict[str, Any] = {"url": settings.redis_url.get_secret_value(),
                          "stop": threading.Event(), "async_started": threading.Event()}

    def feed() -> None:  # beside the doc's code: stop the sync form, then feed the async one
        try:
            wait_for(lambda: "cep" in ns and sum(ns["cep"].alerts.values()) == 3, timeout=20,
                     what="the sync form's three alerts")
        finally:
            ns["stop"].set()
        # Only once the sync form has returned: a consumer that reads entries after `stop`
        # leaves them pending, for another consumer to claim after claim_idle_ms (30 s).
        assert ns["async_started"].wait(20)
        alerts(settings, 4)

    # The doc's block is a body to run in an event loop (it creates a task): wrap it so.
    body = textwrap.indent(example(), "    ")
    code = (f"async def _doc():\n    global cep\n{body}\n"
            "    async_started.set()\n"
            "    while sum(cep.alerts.values()) < 6:\n"
            "        await asyncio.sleep(0.05)\n"
            "    consumer.stop.set()\n"
            "    await asyncio.wait_for(task, 10)\n"
            "    return consumer.stats\n")
    compiled = compile(code, str(DOC), "exec")
    exec(compiled, ns)  # the project's own doc, as written: defines _doc
    helper = threading.Thread(target=feed)
    helper.start()
    stats = asyncio.run(asyncio.wait_for(ns["_doc"](), 60))
    helper.join(30)
    cep = ns["cep"]
    assert cep.alerts == {"w1": 6}  # three through the sync form, three through the async one
    assert cep.bursts == ["w1", "w1"]  # each form saw its three severe alerts as a burst
    assert stats.acked == 3

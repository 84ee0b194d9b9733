"""Debian's real Prometheus, on a loopback port, scraping a running relay with docker/alerts.yml."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.settings import Settings
from devkit.localservers import free_port
from tests.relayutil import insert_cases, relay, wait_for

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Yield (prometheus port, relay metrics port it scrapes every second)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: apt-get install prometheus (scripts/bootstrap does)")
    port, target = free_port(), free_port()
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DOCKER / "alerts.yml")]
    relay_job = next(j for j in config["scrape_configs"] if j["job_name"] == "axiom-cdc-relay")
    relay_job["static_configs"] = [{"targets": [f"127.0.0.1:{target}"]}]
    config["scrape_configs"] = [relay_job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        wait_for(lambda: _ready(port), timeout=30, what="prometheus ready")
        yield port, target
    finally:
        proc.terminate()
        proc.wait(20)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def alert_states(port: int) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in api(port, "alerts")["alerts"]}


def value(port: int, query: str) -> float | None:
    result = api(port, "query", query=query)["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_relay_and_alerts_when_it_stops(
    settings: Settings, prometheus: tuple[int, int]
) -> None:
    port, target = prometheus
    assert len(api(port, "rules")["groups"][0]["rules"]) >= 8
    insert_cases(settings.database_url.get_secret_value(), 25)
    with relay(settings, CDC_METRICS_PORT=str(target), CDC_METRICS_SAMPLE_S="0.5"):
        wait_for(lambda: value(port, "core_relay_streaming") == 1, timeout=30,
                 what="prometheus sees core_relay_streaming 1")
        wait_for(lambda: value(port, "core_relay_slot_lag_bytes") is not None, timeout=30,
                 what="prometheus sees the sampled slot lag")
        wait_for(lambda: value(port, 'core_stream_length{stream="axiom:core:events"}') == 25,
                 timeout=30, what="prometheus sees the 25 entries of axiom:core:events")
        time.sleep(2)  # two evaluations with the relay up
        rules = api(port, "rules")["groups"][0]["rules"]
        assert all(r["health"] == "ok" for r in rules), rules
        assert "AxiomCdcNoRelayStreaming" not in alert_states(port)
        assert value(port, 'up{job="axiom-cdc-relay"}') == 1
    stopped = time.monotonic()
    wait_for(lambda: alert_states(port).get("AxiomCdcNoRelayStreaming") == "pending",
             timeout=30, what="AxiomCdcNoRelayStreaming pending after the relay stopped")
    wait_for(lambda: alert_states(port).get("AxiomCdcRelayDown") == "pending", timeout=30,
             what="AxiomCdcRelayDown pending")
    assert value(port, 'up{job="axiom-cdc-relay"}') == 0
    print(f"prometheus: alerts pending {time.monotonic() - stopped:.1f} s after the relay stopped")

"""docker/alerts.yml: promtool tests pass; every alert fires once and stays quiet once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: apt-get install prometheus (scripts/bootstrap does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=DOCKER,
                          timeout=120)


def test_promtool_rule_tests_pass() -> None:
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_prometheus_config_loads_the_rules() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "alerts.yml" in proc.stdout and "SUCCESS" in proc.stdout, proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    rules: dict[str, Any] = yaml.safe_load((DOCKER / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests: dict[str, Any] = yaml.safe_load((DOCKER / "alerts_test.yml").read_text())
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts never fired in a test"
    assert alerts - quiet == set(), "alerts never checked quiet in a test"
    assert len(alerts) >= 9

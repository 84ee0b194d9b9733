"""Deployment files, checked without containers: they parse and point at real things.

tests/test_deploy_stack.py (`make test-deploy`) builds and starts them with podman.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from cdc.observe.metrics import Metrics
from cdc.pg import serverconf

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# Metrics redis_exporter (oliver006/redis_exporter, --check-streams) exports for stream groups.
REDIS_EXPORTER = {"redis_stream_group_lag", "redis_stream_group_messages_pending",
                  "redis_stream_length"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    return data


def bootstrap_packages() -> set[str]:
    text = (ROOT / "scripts" / "bootstrap").read_text()
    return {p.replace("$PG_MAJOR", "15") for p in re.findall(r'need\+=\("([^"]+)"\)', text)}


def exported_names() -> set[str]:
    names = set()
    for metric in Metrics().registry.collect():
        names.update(s.name for s in metric.samples)
        if metric.type == "gauge":  # a labelled gauge has no sample before its first label
            names.add(metric.name)
    return names


def test_compose_parses_and_references_existing_files() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "relay", "prometheus", "grafana"} <= set(services)
    for svc in services.values():
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), build
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), volume
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # published on loopback only
    relay = services["relay"]
    port = relay["environment"]["CDC_METRICS_PORT"]
    assert f"127.0.0.1:{port}:{port}" in relay["ports"]
    assert relay["environment"]["CDC_METRICS_ADDR"] == "0.0.0.0"
    assert "postgres:" not in relay["environment"]["CDC_DATABASE_URL"].split("@")[0]
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]
    assert {f"relay:{port}", f"relay-standby:{port}", "redis-exporter:9121"} <= set(targets)


def test_dashboard_parses_and_uses_only_metrics_that_exist() -> None:
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "axiom-cdc.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b((?:core|redis)_[a-z_]+)", " ".join(exprs)))
    ours = {u for u in used if u.startswith("core_")}
    assert ours <= exported_names(), ours - exported_names()
    assert used - ours <= REDIS_EXPORTER
    for needed in ("core_event_outbox_published_total", "core_relay_commit_to_ack_seconds_bucket",
                   "core_relay_slot_lag_bytes", "core_dlq_depth", "redis_stream_group_lag"):
        assert needed in used, needed
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "axiom-cdc.yml").read_text()
    )
    mount = next(v for v in compose()["services"]["grafana"]["volumes"] if "dashboards:" in v)
    assert mount.split(":")[1] == provider["providers"][0]["options"]["path"]


def test_images_install_what_bootstrap_installs() -> None:
    packages = bootstrap_packages()
    assert "postgresql-15-wal2json" in packages
    relay = (DOCKER / "relay.Dockerfile").read_text()
    postgres = (DOCKER / "postgres.Dockerfile").read_text()
    for dockerfile in (relay, postgres):
        for pkg in re.findall(r'"(postgresql-[^"]+)"', dockerfile):
            assert pkg.replace("${PG_MAJOR}", "15") in packages, pkg
    assert "pip install" in relay and "COPY pyproject.toml" in relay  # the same dependency list
    assert "-r constraints.txt" in relay and "COPY docker/constraints.txt" in relay
    assert "USER 10001:10001" in relay and "HEALTHCHECK" in relay
    assert "docker/postgres/cdc-server.conf docker/postgres/cdc-plugins.conf" in postgres
    redis_conf = (DOCKER / "redis.conf").read_text()
    assert "appendonly yes" in redis_conf and "maxmemory-policy noeviction" in redis_conf


def test_image_server_settings_are_the_ones_serverconf_decides() -> None:
    header = serverconf.HEADER
    conf = DOCKER / "postgres"
    assert (conf / "cdc-server.conf").read_text() == header + serverconf.server_conf()
    assert (conf / "cdc-plugins.conf").read_text() == header + serverconf.plugins_conf()
    assert "wal_level = logical" in serverconf.server_conf()
    entry = (conf / "entrypoint.sh").read_text()
    assert "--describe-config" in entry and "cdc-plugins.conf" in entry


def test_constraints_pin_every_dependency() -> None:
    lines = [x for x in (DOCKER / "constraints.txt").read_text().splitlines()
             if x and not x.startswith("#")]
    pinned = {x.split("==")[0].lower().replace("_", "-") for x in lines}
    assert all("==" in x for x in lines), lines
    deps = re.findall(r'^\s+"([A-Za-z0-9_.-]+)', (ROOT / "pyproject.toml").read_text().split(
        "[project.optional-dependencies]")[0], flags=re.M)
    for dep in deps:
        assert dep.lower().replace("_", "-") in pinned, dep


def test_systemd_unit_runs_the_relay_and_stops_it_cleanly() -> None:
    unit = (DOCKER / "axiom-cdc-relay.service").read_text()
    sections = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.M))
    assert sections["ExecStart"].endswith("cdc run")
    assert sections["KillSignal"] == "SIGTERM" and sections["Restart"] == "always"
    assert sections["RestartPreventExitStatus"] == "2"
    assert "[Install]" in unit and "EnvironmentFile" in sections

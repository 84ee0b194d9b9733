"""Deployment files, checked without containers: they parse and point at real things.

tests/test_deploy_stack.py (`make test-deploy`) builds and starts them with podman.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.observe.metrics import Metrics
from cdc.pg import serverconf
from cdc.streams import luascripts
from devkit.localservers import DEFAULT_PG_MAJOR

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
    major = bootstrap_pg_major()
    return {p.replace("$PG_MAJOR", major) for p in re.findall(r'need\+=\("([^"]+)"\)', text)}


def bootstrap_pg_major() -> str:
    """Return the PG_MAJOR scripts/bootstrap uses when none is set."""
    found = re.findall(r"^PG_MAJOR=\$\{PG_MAJOR:-(\d+)\}$", (ROOT / "scripts" / "bootstrap")
                       .read_text(), flags=re.M)
    assert len(found) == 1, found
    return str(found[0])


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    assert not pending, f"{dockerfile.name} ends inside a continued line"
    return out


def shell_commands(run: str) -> list[list[str]]:
    """Return the commands of a RUN line (split on && and ;) as argument lists."""
    return [shlex.split(c) for c in re.split(r"&&|;", run) if c.strip()]


def pip_installs(steps: list[tuple[str, str]]) -> list[tuple[int, list[str]]]:
    """Return (instruction index, argv) of every `pip install` the image runs."""
    return [
        (i, argv) for i, (word, args) in enumerate(steps) if word == "RUN"
        for argv in shell_commands(args)
        if len(argv) > 2 and argv[0].endswith("/pip") and argv[1] == "install"
    ]


def copied(steps: list[tuple[str, str]], upto: int) -> set[str]:
    """Return the build-context paths COPY brings in before instruction `upto`."""
    out: set[str] = set()
    for word, args in steps[:upto]:
        if word == "COPY":
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            out.update(sources)
    return out


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
    for name in ("relay.Dockerfile", "postgres.Dockerfile"):  # one default PostgreSQL major
        args = [a for w, a in instructions(DOCKER / name) if w == "ARG"]
        assert f"PG_MAJOR={DEFAULT_PG_MAJOR}" in args, (name, args)
    assert bootstrap_pg_major() == DEFAULT_PG_MAJOR
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


def check_relay_image(dockerfile: Path) -> None:
    """Parsed, not grepped: the order and options a working relay image needs."""
    steps = instructions(dockerfile)
    assert steps[0][0] == "FROM"
    installs = pip_installs(steps)
    assert len(installs) == 2, installs
    (deps_at, deps), (pkg_at, pkg) = installs
    # First the pinned dependencies, from the constraints file copied in before.
    assert deps[deps.index("-r") + 1] == "constraints.txt"
    assert "docker/constraints.txt" in copied(steps, deps_at)
    # Then the package, from the sources copied in before it, its dependencies already there
    # (--no-deps) and held to the same pins (-c constraints.txt).
    assert pkg[-1] == "." and "--no-deps" in pkg
    assert "-c" in pkg and pkg[pkg.index("-c") + 1] == "constraints.txt"
    assert {"pyproject.toml", "README.md", "cdc"} <= copied(steps, pkg_at)
    assert deps_at < pkg_at
    after = shell_commands(steps[pkg_at][1])
    assert any(a[0].endswith("/pip") and a[1] == "check" for a in after)  # nothing unmet
    assert [a for w, a in steps if w == "USER"][-1] == "10001:10001"
    assert [a for w, a in steps if w == "ENTRYPOINT"] == ['["cdc"]']
    health = next(a for w, a in steps if w == "HEALTHCHECK")
    assert health.endswith('CMD ["cdc", "healthcheck"]')


def test_relay_image_installs_pinned_dependencies_then_the_package_alone() -> None:
    check_relay_image(DOCKER / "relay.Dockerfile")


@pytest.mark.parametrize("breakage", [
    ("-c constraints.txt .", "."),  # the package unpinned
    ("COPY cdc ./cdc", "COPY cdc/streams ./cdc/streams"),  # the sources half copied
    ("--no-deps \\\n", "\\\n"),  # dependencies resolved again, unpinned
    ("USER 10001:10001", "USER root"),
])
def test_the_image_check_fails_a_broken_dockerfile(
    breakage: tuple[str, str], tmp_path: Path
) -> None:
    text = (DOCKER / "relay.Dockerfile").read_text()
    assert breakage[0] in text, breakage
    broken = tmp_path / "relay.Dockerfile"
    broken.write_text(text.replace(breakage[0], breakage[1]))
    with pytest.raises(AssertionError):
        check_relay_image(broken)


def build_image_wheel(dest: Path) -> Path:
    """Build the wheel from exactly what relay.Dockerfile copies in before installing."""
    steps = instructions(DOCKER / "relay.Dockerfile")
    pkg_at = pip_installs(steps)[-1][0]
    src = dest / "context"
    for rel in copied(steps, pkg_at):
        if rel.startswith("docker/"):
            continue  # constraints and scripts, not part of the package
        path = ROOT / rel
        if path.is_dir():
            shutil.copytree(path, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, src / rel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(dest / "dist"), str(src)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (dest / "dist").glob("axiom_cdc-*.whl")
    return wheel


def test_the_wheel_ships_lua_and_migrations_and_finds_them_installed(tmp_path: Path) -> None:
    wheel = build_image_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    lua = {f"cdc/streams/lua/{p.name}" for p in (ROOT / "cdc/streams/lua").glob("*.lua")}
    sql = {f"cdc/pg/sql/{p.name}" for p in (ROOT / "cdc/pg/sql").glob("*.sql")}
    assert len(lua) >= len(luascripts.NAMES) and len(sql) >= 5
    assert lua <= names, lua - names
    assert sql <= names, sql - names
    assert "cdc/py.typed" in names
    assert not [n for n in names if n.startswith(("devkit/", "tests/", "bench/"))]
    # Installed from the wheel alone (not this checkout): migrations and scripts are found.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "import cdc; from cdc.settings import Settings; from cdc.pg import migrate;"
        "from cdc.streams import luascripts;"
        "d = Settings().migrations_dir;"
        "print(json.dumps({'cdc': cdc.__file__, 'dir': str(d),"
        " 'sql': sorted(p.name for p in d.glob('*.sql')),"
        " 'migrations': len(migrate.load(d)),"
        " 'lua': [luascripts.script(n).name for n in luascripts.NAMES]}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)
    assert found["cdc"].startswith(str(site)) and found["dir"].startswith(str(site))
    assert found["sql"] == sorted(n.rsplit("/", 1)[1] for n in sql)
    assert found["migrations"] == len(sql)
    assert found["lua"] == list(luascripts.NAMES)

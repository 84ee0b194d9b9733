"""The compose stack built and started with podman (`make test-deploy`; marker `deploy`).

Proves through the containers: events committed on PostgreSQL reach every routed stream
and both consumer groups; stopping the active relay hands over to the standby with
nothing lost or duplicated; SIGTERM exits 0 within 5 s; the relay runs read-only as a
non-root numeric user and connects as a non-superuser REPLICATION role.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from cdc.pg import serverconf
from tests.podmanstack import ROOT, Stack, podman

pytestmark = pytest.mark.deploy

ROUTES = {"DEPLOY_PROBE": "axiom:core:events", "WATCH_DEPLOY_PROBE": "axiom:watches",
          "WORKER_DEPLOY_PROBE": "axiom:workers"}
GROUPS = ("synapse_group", "watch_cep_group")
PASSWORD = "deploy-test-pw"
RELAYS = ("relay", "relay-standby")


def say(text: str) -> None:
    """Print one line of what was proved (shown by `make test-deploy`)."""
    print(f"test-deploy: {text}", flush=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    os.environ.setdefault("POSTGRES_PASSWORD", PASSWORD)
    os.environ.setdefault("CDC_RELAY_PASSWORD", PASSWORD + "-relay")
    s = Stack(f"cdc-deploy-{os.getpid()}")
    for stale in Stack.remove_stale("cdc-deploy-", alive={s.project}):
        say(f"removed the containers of an interrupted run: {stale}")
    try:
        for service in ("postgres", "redis", "migrate"):  # migrate builds the relay image
            took = s.build(service)
            say(f"built image {s.services[service]['image']} in {took:.1f} s")
        s.network()
        started = time.monotonic()
        for service in ("postgres", "redis", "migrate", *RELAYS):
            s.up(service)
        for relay in RELAYS:
            s.wait_healthy(relay, 60)
        say(f"started postgres, redis, migrate (exit 0), relay, relay-standby on network"
            f" {s.project}; all healthy in {time.monotonic() - started:.1f} s")
        yield s
    finally:
        s.down()


def pg_dsn(s: Stack) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{s.ports['postgres'][5432]}/postgres"


def redis_client(s: Stack) -> redis.Redis:
    return redis.Redis(port=s.ports["redis"][6379], decode_responses=True)


def probe(s: Stack, service: str, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{s.ports[service][9108]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def active_relay(s: Stack, timeout: float = 60) -> str:
    """Return the relay whose /readyz is 200, waiting for one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for relay in RELAYS:
            if s.running(relay) and probe(s, relay, "/readyz")[0] == 200:
                return relay
        time.sleep(0.2)
    raise AssertionError("no relay became ready: " + s.logs(RELAYS[0])[-2000:])


def insert(dsn: str, start: int, n: int, *, per_tx: int = 50,
           done: list[float] | None = None) -> None:
    """Commit n events numbered from `start`, cycling through the three routes.

    With `done`, append the monotonic time of each commit (one per transaction).
    """
    types = list(ROUTES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(start, start + n, per_tx):
            with conn.transaction():
                for seq in range(first, min(first + per_tx, start + n)):
                    conn.execute(
                        "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id,"
                        " event_type, payload) VALUES ('t1', 'probe', %s, %s,"
                        " jsonb_build_object('seq', %s::int, 'idempotency_key', %s::text))",
                        (f"a{seq}", types[seq % 3], seq, f"deploy-{seq}"),
                    )
            if done is not None:
                done.append(time.monotonic())


def published(rds: redis.Redis) -> Counter[str]:
    """Count each idempotency key over every routed stream, checking its route."""
    seen: Counter[str] = Counter()
    for stream in set(ROUTES.values()):
        for _, fields in rds.xrange(stream):
            assert ROUTES[fields["event_type"]] == stream, fields
            seen[fields["idempotency_key"]] += 1
    return seen


def wait_published(rds: redis.Redis, n: int, timeout: float = 90) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = published(rds)
        if len(seen) >= n or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def group_reads(rds: redis.Redis, group: str) -> set[str]:
    """Read every stream through `group` (XREADGROUP >) and return the keys delivered."""
    keys: set[str] = set()
    for stream in set(ROUTES.values()):
        while True:
            got = rds.xreadgroup(group, "deploy-test", {stream: ">"}, count=1000)
            if not got or not got[0][1]:
                break
            keys.update(fields["idempotency_key"] for _, fields in got[0][1])
    return keys


def test_stack_streams_hands_over_and_stops_cleanly(stack: Stack) -> None:
    s, dsn, rds = stack, pg_dsn(stack), redis_client(stack)
    first = active_relay(s)
    standby = next(r for r in RELAYS if r != first)
    code, body = probe(s, standby, "/readyz")
    assert code == 503 and "standing by" in body, (code, body)
    assert probe(s, standby, "/healthz")[0] == 200
    say(f"{first} streams (/readyz 200); {standby} /healthz 200, /readyz 503 '{body.strip()}'")

    aof = s.exec("redis", "redis-cli", "config", "get", "appendonly").stdout.split()
    assert aof == ["appendonly", "yes"], aof
    with psycopg.connect(dsn) as conn:
        gucs = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('wal_level', 'output_plugin_libraries')").fetchall())
    assert gucs["wal_level"] == "logical"
    assert "wal2json" in serverconf.parse_list(gucs.get("output_plugin_libraries", "wal2json"))
    say(f"redis appendonly yes; postgres {gucs}")

    started = time.monotonic()
    insert(dsn, 0, 300)
    seen = wait_published(rds, 300)
    assert len(seen) == 300 and max(seen.values()) == 1
    per_stream = {st: int(rds.xlen(st)) for st in sorted(set(ROUTES.values()))}
    assert all(v == 100 for v in per_stream.values()), per_stream
    say(f"300 events committed on the postgres container reached {per_stream}"
        f" in {time.monotonic() - started:.1f} s")
    for group in GROUPS:
        assert group_reads(rds, group) == set(seen), group
    say(f"consumer groups {', '.join(GROUPS)} each received all 300")

    # Handover under load: keep committing while the active relay is stopped.
    commits: list[float] = []
    enough = threading.Event()

    def write() -> None:
        while not enough.is_set():  # 10 events a transaction, about 200 a second
            insert(dsn, 300 + 10 * len(commits), 10, per_tx=10, done=commits)
            time.sleep(0.05)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.0)
    stopping = time.monotonic()
    code, took = s.stop(first)
    assert code == 0 and took < 5, (code, took, s.logs(first)[-2000:])
    say(f"SIGTERM to {first}: exit {code} after {took:.2f} s")
    assert active_relay(s) == standby
    handed = time.monotonic()
    time.sleep(1.0)
    enough.set()
    writer.join(30)
    total = 300 + 10 * len(commits)
    during = 10 * sum(stopping <= t <= handed for t in commits)
    after = 10 * sum(t > handed for t in commits)
    assert during > 0 and after > 0, (during, after)  # the handover happened under load
    seen = wait_published(rds, total)
    lost = total - len(seen)
    duplicated = sum(c - 1 for c in seen.values())
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FILTER (WHERE status <> 'PUBLISHED'), count(*)"
                           " FROM event_outbox").fetchone()
    assert row is not None
    say(f"handover {first} -> {standby} in {handed - stopping:.1f} s (SIGTERM to standby"
        f" /readyz 200) under load: {during} events committed meanwhile, {after} after;"
        f" {total} in all: lost {lost}, duplicated {duplicated},"
        f" not PUBLISHED in the outbox {row[0]}")
    assert (lost, duplicated, row[0], row[1]) == (0, 0, 0, total)

    image = json.loads(podman("image", "inspect", s.services[standby]["image"]).stdout)[0]
    assert image["Healthcheck"]["Test"] == ["CMD", "cdc", "healthcheck"], image
    inspect = s.inspect(standby)
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    uid = s.exec(standby, "id", "-u").stdout.strip()
    assert uid == "10001", uid
    touch = s.exec(standby, "touch", "/opt/axiom-cdc/probe")
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch
    # compose sets CDC_METRICS_ADDR itself; the image alone must listen beyond loopback too
    default = podman("run", "--rm", "--network", "none", "--entrypoint", "python",
                     s.services[standby]["image"], "-c",
                     "from cdc.settings import Settings; print(Settings().metrics_addr)")
    assert default.stdout.strip() == "0.0.0.0", default
    say(f"{standby} runs as uid {uid} (user {inspect['Config']['User']!r}) on a read-only"
        f" root: touch says {touch.stderr.strip()!r}; image HEALTHCHECK"
        f" {image['Healthcheck']['Test'][1:]}; the image alone binds metrics to"
        f" {default.stdout.strip()}")

    with psycopg.connect(dsn) as conn:
        role = conn.execute(
            "SELECT r.rolname, r.rolsuper, r.rolreplication,"
            " pg_has_role(r.oid, 'cdc_relay', 'MEMBER'),"
            " array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            "       WHERE m.member = r.oid)"
            " FROM pg_stat_replication s JOIN pg_roles r ON r.oid = s.usesysid"
        ).fetchall()
    assert role == [("relay", False, True, True, ["cdc_relay"])], role
    say("the streaming relay connects as role relay: REPLICATION, not superuser, member of"
        " cdc_relay (sql/006) and of nothing else")

    code, took = s.stop(standby)
    assert code == 0 and took < 5, (code, took)
    say(f"SIGTERM to {standby}: exit {code} after {took:.2f} s")


def test_systemd_unit_runs_the_relay_under_its_sandbox(stack: Stack, tmp_path: Path) -> None:
    """docker/axiom-cdc-relay.service under systemd (PID 1 in a container) on the same stack."""
    s, dsn, rds = stack, pg_dsn(stack), redis_client(stack)
    for relay in RELAYS:
        s.stop(relay)  # the unit's relay must hold the slot
    started = time.monotonic()
    podman("build", "--format", "docker", "--pull=never", "--network", "host", "-q",
           "-f", str(ROOT / "tests" / "deploy" / "systemd.Dockerfile"), "-t",
           "axiom-cdc-systemd-probe", str(ROOT), timeout=600)
    say(f"built the systemd probe image in {time.monotonic() - started:.1f} s")
    relay_pw = os.environ["CDC_RELAY_PASSWORD"]
    (tmp_path / "relay.env").write_text(
        f"CDC_DATABASE_URL=postgresql://relay:{relay_pw}@postgres:5432/postgres\n"
        "CDC_REDIS_URL=redis://redis:6379/0\n")
    name = f"{s.project}-systemd"
    s.extra.append(name)
    podman("run", "-d", "--name", name, "--systemd=always", "--network", s.project,
           "-v", f"{tmp_path}:/etc/axiom-cdc:ro", "axiom-cdc-systemd-probe")

    def ready() -> bool:
        probe = podman("exec", "-e", "CDC_METRICS_PORT=9108", name, "/opt/axiom-cdc/bin/cdc",
                       "healthcheck", "--ready", check=False)
        return probe.returncode == 0

    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, podman(
            "exec", name, "journalctl", "-u", "axiom-cdc-relay", "--no-pager", check=False).stdout
        time.sleep(0.5)
    pid = podman("exec", name, "systemctl", "show", "-p", "MainPID", "--value",
                 "axiom-cdc-relay").stdout.strip()
    status = dict(
        line.split(":\t", 1) for line in podman("exec", name, "cat", f"/proc/{pid}/status")
        .stdout.splitlines() if ":\t" in line
    )
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", status
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status
    say(f"systemd runs the unit's relay (pid {pid}, uid {status['Uid'].split()[0]}): streaming,"
        f" NoNewPrivs 1, seccomp filter on, no capabilities")

    before = len(published(rds))
    insert(dsn, 100_000, 300)
    seen = wait_published(rds, before + 300)
    assert len(seen) == before + 300 and max(seen.values()) == 1
    stopping = time.monotonic()
    podman("exec", name, "systemctl", "stop", "axiom-cdc-relay")
    took = time.monotonic() - stopping
    show = dict(line.split("=", 1) for line in podman(
        "exec", name, "systemctl", "show", "-p", "Result", "-p", "ExecMainStatus",
        "-p", "ExecMainCode", "axiom-cdc-relay").stdout.splitlines())
    assert show["Result"] == "success" and show["ExecMainStatus"] == "0", show
    assert took < 5, took
    say(f"the unit's relay published 300 more events once each; systemctl stop: exit"
        f" {show['ExecMainStatus']}, Result={show['Result']}, {took:.2f} s")

"""Redis Sentinel: CDC_REDIS_URL=redis+sentinel://... follows the primary through a failover.

Real processes: a primary, two replicas and three Sentinels (`redis-server --sentinel`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis
from pydantic import SecretStr

from cdc.errors import ConfigError
from cdc.settings import Settings
from cdc.streams import redisconn, urls
from devkit.localservers import LocalRedisSentinel
from tests.chaosutil import Producer, check_invariants
from tests.opsutil import Cli
from tests.relayutil import STREAMS, cdc, relay, wait_for


def _by_check(findings: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {f["check"]: f for f in findings}


async def _async_len(url: str) -> int:
    r = redisconn.async_client(url, timeout=5)
    try:
        return int(await r.xlen("axiom:core:events"))
    finally:
        await r.aclose()


def test_sentinel_url_parses_and_redacts() -> None:
    url = "redis+sentinel://u:s3cret@h1:1,h2/svc/2?sentinel_password=p4ss"
    s = urls.parse_sentinel(url)
    assert s.sentinels == [("h1", 1), ("h2", 26379)] and s.service == "svc" and s.db == 2
    assert (s.username, s.password, s.sentinel_password) == ("u", "s3cret", "p4ss")
    shown = urls.redact_url(url)
    assert "s3cret" not in shown and "p4ss" not in shown and "h1:1,h2/svc/2" in shown
    for bad in ("redis+sentinel://h1:1", "redis+sentinel://h1:x/svc", "redis+sentinel:///svc",
                "redis+sentinel://:pw@h1:1/a/b/c"):
        with pytest.raises(ConfigError) as e:
            urls.parse_sentinel(bad)
        assert "pw" not in str(e.value)


@pytest.mark.slow
def test_relay_and_tools_follow_a_sentinel_failover(
    settings: Settings, pg_dsn: str, cli: Cli, tmp_path: Path
) -> None:
    """SIGKILL of the primary mid-run, CDC_REDIS_MIN_REPLICAS=1: lost 0, duplicated 0."""
    with LocalRedisSentinel(replicas=2, sentinels=3) as sen:
        s = settings.model_copy(update={"redis_url": SecretStr(sen.url)})
        cli.settings = s
        first = sen.master_port()
        assert first == sen.primary.port
        client = redisconn.client(sen.url, timeout=5)
        assert cdc(s, "slot", "create").returncode == 0
        producer = Producer(pg_dsn, 12_000, per_tx=200, pause=0.08)
        log = tmp_path / "relay.log"
        with relay(s, str(log), CDC_REDIS_MIN_REPLICAS="1",
                   CDC_REDIS_WAIT_TIMEOUT_MS="500") as proc:
            thread = producer.start()
            wait_for(lambda: sum(int(client.xlen(x)) for x in STREAMS) > 2000,
                     what="first entries")
            sen.primary.kill()
            t_kill = time.monotonic()
            produced_at_kill = producer.done
            wait_for(lambda: sen.master_port() != first, timeout=30, what="a replica promoted")
            promoted = time.monotonic() - t_kill
            thread.join(60)
            assert producer.error is None
            f = check_invariants(pg_dsn, client, s.slot)
            assert proc.poll() is None, "the relay rides out the failover"
        assert f.events == 12_000 and f.lost == 0 and f.duplicated == 0
        assert produced_at_kill < 9_000, "the kill came after the producer was nearly done"
        text = log.read_text()
        assert "Redis" in text and "retrying with backoff" in text  # it saw the primary go
        assert text.count("streaming slot") >= 2  # a new session, on the promoted replica
        assert "Redis lost its state" not in text  # the promoted replica has the token
        # The tools find the new primary through the same URL.
        status = cli("status", "--json")
        lengths = {x["name"]: x["length"] for x in status.json()["streams"]}
        assert sum(lengths.values()) == 12_000
        assert not [p for p in status.json()["problems"] if p.startswith("Redis")]
        doctor = {f["check"]: f for f in cli("doctor", "--json").json()}
        assert doctor["redis"]["level"] == doctor["redis_aof"]["level"] == "ok"
        assert sen.url in doctor["redis"]["message"]
        trimmed = cli("trim", "--cap", "0", "--json")
        assert trimmed.code == 0, trimmed.err
        passes = [orjson.loads(line) for line in trimmed.out.splitlines()]
        assert {p["stream"]: (p["removed"], p["length"]) for p in passes} == {
            n: (0, length) for n, length in lengths.items()  # nothing read yet: nothing cut
        }
        assert asyncio.run(_async_len(sen.url)) == lengths["axiom:core:events"]
        client.close()
        print(f"sentinel failover: {produced_at_kill} of 12000 events produced at the kill,"
              f" promoted after {promoted:.1f} s; {f}")


def test_doctor_checks_the_sentinels_and_names_each_fix(cli: Cli) -> None:
    """Healthy, then the master's guard off, too few replicas, a wrong service, a Sentinel down."""
    with LocalRedisSentinel(replicas=1, sentinels=3) as sen:
        cli.settings = cli.settings.model_copy(update={"redis_url": SecretStr(sen.url)})
        master = f"127.0.0.1:{sen.primary.port}"
        run = cli("doctor", "--json", CDC_REDIS_MIN_REPLICAS="1")
        found = _by_check(run.json())
        for port in sen.sentinel_ports:
            assert found[f"sentinel@127.0.0.1:{port}"]["level"] == "ok"
        agreed = found["sentinel_master"]
        assert agreed["level"] == "ok"
        assert f"3 of 3 Sentinel(s) that answer name {master}" in agreed["message"]
        assert found["sentinel_quorum"]["level"] == "ok"
        assert found["sentinel_replicas"]["level"] == "ok"
        assert "1 replica(s) connected" in found["sentinel_replicas"]["message"]
        guard = found["min_replicas_to_write"]
        assert guard["level"] == "warn" and master in guard["message"]
        assert "redis_min_replicas" not in found  # CDC_REDIS_MIN_REPLICAS=1 here
        assert run.code == 0, run.out  # warnings only

        # Apply the fix doctor names (but CONFIG REWRITE: these servers have no config file).
        statements = guard["fix"].removeprefix("on each master: ").split("; ")
        assert statements[-1] == "CONFIG REWRITE"
        with redis.Redis(port=sen.primary.port) as r:
            for statement in statements[:-1]:
                r.execute_command(*statement.split())
        found = _by_check(cli("doctor", "--json", CDC_REDIS_MIN_REPLICAS="1").json())
        assert found["min_replicas_to_write"]["level"] == "ok"

        # The relay would WAIT for 2 replicas of a master that has 1: every batch falls short.
        short = cli("doctor", CDC_REDIS_MIN_REPLICAS="2")
        assert short.code == 1
        assert "FAIL  sentinel_replicas " in short.out
        assert f"master {master} has 1 replica(s) connected, needs 2" in short.out
        assert f"redis-server --replicaof 127.0.0.1 {sen.primary.port}" in short.out

        # A service name no Sentinel monitors: said as such, with where to look.
        hosts = sen.url.split("://", 1)[1].rsplit("/", 1)[0]
        cli.settings = cli.settings.model_copy(
            update={"redis_url": SecretStr(f"redis+sentinel://{hosts}/nope")})
        wrong = cli("doctor", "--json")
        found = _by_check(wrong.json())
        assert wrong.code == 1
        assert found["sentinel_master"]["level"] == "FAIL"
        assert "no Sentinel monitors a service named 'nope'" in found["sentinel_master"]["message"]
        assert "SENTINEL MASTERS" in found["sentinel_master"]["fix"]
        assert found["redis"]["level"] == "FAIL"

        # One Sentinel down: named, with its fix; the two left still agree and reach quorum.
        cli.settings = cli.settings.model_copy(update={"redis_url": SecretStr(sen.url)})
        sen.procs[-1].kill()  # the last: the primary's discovery asks the first one first
        sen.procs[-1].wait(10)
        down = cli("doctor", "--json", CDC_REDIS_MIN_REPLICAS="1")
        found = _by_check(down.json())
        dead = found[f"sentinel@127.0.0.1:{sen.sentinel_ports[-1]}"]
        assert dead["level"] == "FAIL" and "does not answer" in dead["message"]
        assert "--sentinel" in dead["fix"]
        assert found["sentinel_master"]["level"] == "ok"
        assert "2 of 2 Sentinel(s)" in found["sentinel_master"]["message"]
        assert found["sentinel_quorum"]["level"] == "ok"
        assert found["redis"]["level"] == "ok" and down.code == 1

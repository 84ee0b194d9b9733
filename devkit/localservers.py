"""Throwaway PostgreSQL and Redis servers on free local ports (tests, demo, bench).

PostgreSQL refuses to run as root, so when we are root every server command runs
as the `postgres` OS user. Nothing here touches the servers on 5432 or 6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from cdc.pg import serverconf

# The PostgreSQL major version when PG_MAJOR is unset: scripts/bootstrap's and the images'
# default too (tests/test_deploy.py checks that they agree).
DEFAULT_PG_MAJOR = "15"
RESERVED_PORTS = {5432, 6379}


def free_port() -> int:
    """Return a TCP port nobody listens on (never 5432 or 6379)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def cluster_port() -> int:
    """Return a free port p <= 55535 whose cluster bus port p + 10000 is free too."""
    while True:
        port = free_port()
        if port > 55535 or port + 10000 in RESERVED_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def pg_major() -> str:
    """Return the PostgreSQL major version to run: PG_MAJOR as it is now, else the default."""
    return os.environ.get("PG_MAJOR") or DEFAULT_PG_MAJOR


def pg_bindir(major: str | None = None) -> Path:
    """Return the directory of the PostgreSQL server binaries (of `major`, else pg_major())."""
    path = Path(f"/usr/lib/postgresql/{major or pg_major()}/bin")
    if not (path / "initdb").exists():
        raise FileNotFoundError(f"{path}/initdb not found: run scripts/bootstrap")
    return path


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class LocalPostgres:
    """A PostgreSQL cluster in a temp dir with `wal_level=logical` and wal2json available."""

    def __init__(
        self, *, port: int | None = None, wal_level: str = "logical", extra_conf: str = "",
        major: str | None = None,
    ) -> None:
        self.bindir = pg_bindir(major)  # PG_MAJOR is read here, when a server is made
        self.port = port or free_port()
        self.wal_level = wal_level
        self.extra_conf = extra_conf
        self.root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"

    @property
    def dsn(self) -> str:
        """Return a superuser DSN for the `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(list(args)), check=True, capture_output=True, cwd=self.root)

    def init(self) -> None:
        """Run initdb and write our settings."""
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
        )
        # The relay's settings as the image has them (cdc/serverconf.py), more slots for tests.
        needed = serverconf.server_conf(
            recommended=False, wal_level=self.wal_level, max_replication_slots="20",
            max_wal_senders="20",
        )
        if serverconf.knows_plugin_libraries(self.bindir):
            needed += serverconf.plugins_conf()
        conf = f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.root}'
{needed}max_connections = 120
fsync = off
full_page_writes = off
shared_buffers = 128MB
wal_sender_timeout = 60s
log_min_messages = warning
{self.extra_conf}
"""
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(conf)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", "60", "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode` as pg_ctl: smart, fast, immediate)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"
            )

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same data dir and port."""
        self.stop(mode)
        self.start()

    def set_conf(self, line: str) -> None:
        """Append a line to postgresql.conf (takes effect on restart)."""
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(line + "\n")

    def destroy(self) -> None:
        """Stop the server and remove its files."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class LocalRedis:
    """A redis-server on a free port; no persistence unless `appendonly=True`."""

    def __init__(
        self, *, port: int | None = None, appendonly: bool = False, args: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.args = args  # more redis-server options, e.g. ("--replicaof", "127.0.0.1", "6400")
        self.root = Path(tempfile.mkdtemp(prefix="cdc-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server and wait for PING."""
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.root), "--save", "", "--daemonize", "no",
            "--logfile", str(self.root / "redis.log"),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", *self.args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"redis-server on {self.port} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM; with AOF, what was acked is on disk)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def running(self) -> bool:
        """Say whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and dir."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and remove its files."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class LocalRedisCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on loopback ports."""

    def __init__(
        self, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 5000,
        appendonly: bool = True,
    ) -> None:
        # 5 s, not Redis' 15 s: failover tests pass 1000; below ~5 s a master that a loaded
        # 2-core machine starves for a second fails over in the middle of a test that wants none.
        self.nodes = [
            LocalRedis(port=cluster_port(), appendonly=appendonly, args=(
                "--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf", "--repl-diskless-sync-delay", "0",
            ))
            for _ in range(masters * (1 + replicas))
        ]
        self.replicas = replicas
        self.masters = masters

    @property
    def url(self) -> str:
        """Return the URL of the first node (any node will do for a cluster client)."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, create the cluster, wait until it is ok."""
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(self._ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        # A replica that never synced cannot be promoted: wait for every replica's link.
        while not all(self._synced(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster's replicas did not sync")
            time.sleep(0.1)

    def settled(self, timeout: float = 30.0) -> None:
        """Wait until every node is ok and `masters` masters serve the slots."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [n for n in self.nodes if n.running()]
            if all(self._ok(n) for n in alive):
                with redis.Redis(port=alive[0].port, socket_timeout=2) as client:
                    slots = client.execute_command("CLUSTER", "SLOTS")
                if len({tuple(r[2][:2]) for r in slots}) == self.masters:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not settle on its masters")
            time.sleep(0.1)

    @staticmethod
    def _synced(node: LocalRedis) -> bool:
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            info = client.info("replication")
            return bool(info.get("role") == "master" or info.get("master_link_status") == "up")

    @staticmethod
    def _ok(node: LocalRedis) -> bool:
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text

    def destroy(self) -> None:
        """Stop every node and remove its files."""
        for node in self.nodes:
            node.destroy()

    def __enter__(self) -> LocalRedisCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class LocalRedisSentinel:
    """A primary with `replicas` replicas and `sentinels` Sentinels watching it, on loopback."""

    SERVICE = "cdc"

    def __init__(self, *, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.primary = LocalRedis(appendonly=True)
        self.replicas = [
            LocalRedis(appendonly=True, args=("--replicaof", "127.0.0.1", str(self.primary.port)))
            for _ in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.root = Path(tempfile.mkdtemp(prefix="cdc-sentinel-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Return the redis+sentinel:// URL of the service."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    @property
    def servers(self) -> list[LocalRedis]:
        """Return the primary and the replicas as started (roles change on failover)."""
        return [self.primary, *self.replicas]

    def master_port(self) -> int:
        """Return the port the first Sentinel that answers names as the primary."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), redis.Redis(
                port=port, socket_timeout=1, decode_responses=True
            ) as s:
                addr = s.execute_command("SENTINEL", "get-master-addr-by-name", self.SERVICE)
                if addr:
                    return int(addr[1])
        raise RuntimeError("no Sentinel answers")

    def start(self) -> None:
        """Start the servers and Sentinels; wait until every Sentinel sees all of them."""
        for server in self.servers:
            server.start()
        for replica in self.replicas:  # synced, so WAIT counts it from the first write
            with redis.Redis(port=replica.port, socket_timeout=2, decode_responses=True) as r:
                deadline = time.monotonic() + 20
                while r.info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica {replica.port} did not sync")
                    time.sleep(0.05)
        n = len(self.sentinel_ports)
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"logfile {self.root}/sentinel-{port}.log\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} {n // 2 + 1}\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n"
            )
            self.procs.append(subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        deadline = time.monotonic() + 30
        while not all(self._sees_all(p) for p in self.sentinel_ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinels did not discover the replicas and each other")
            time.sleep(0.1)

    def _sees_all(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as s:
                reps = s.execute_command("SENTINEL", "replicas", self.SERVICE)
                peers = s.execute_command("SENTINEL", "sentinels", self.SERVICE)
        except redis.RedisError:
            return False
        return len(reps) == len(self.replicas) and len(peers) == len(self.sentinel_ports) - 1

    def destroy(self) -> None:
        """Stop the Sentinels and servers and remove their files."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(20)
        for server in self.servers:
            server.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRedisSentinel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

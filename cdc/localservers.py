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

from cdc import serverconf

PG_MAJOR = os.environ.get("PG_MAJOR", "15")
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


def pg_bindir() -> Path:
    """Return the directory of the PostgreSQL server binaries."""
    path = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
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
        self, *, port: int | None = None, wal_level: str = "logical", extra_conf: str = ""
    ) -> None:
        self.port = port or free_port()
        self.wal_level = wal_level
        self.extra_conf = extra_conf
        self.root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.bindir = pg_bindir()

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
        self, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
        appendonly: bool = True,
    ) -> None:
        self.nodes = [
            LocalRedis(port=cluster_port(), appendonly=appendonly, args=(
                "--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf", "--repl-diskless-sync-delay", "0",
            ))
            for _ in range(masters * (1 + replicas))
        ]
        self.replicas = replicas

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

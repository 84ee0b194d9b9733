"""Session-scoped throwaway PostgreSQL and Redis, plus per-test databases and settings.

CDC_TEST_BACKEND=local (default) runs initdb and redis-server here;
CDC_TEST_BACKEND=docker uses testcontainers (needs a Docker engine).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from cdc.pg import migrate
from cdc.settings import SQL_DIR, Settings
from devkit.localservers import LocalPostgres, LocalRedis
from tests.opsutil import Cli

TEMPLATE_DB = "cdc_template"
_counter = itertools.count(1)


DOCKER_DIR = Path(__file__).resolve().parent.parent / "docker"


class DockerPostgres:
    """PostgreSQL in a container built from docker/postgres.Dockerfile (wal2json, logical)."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.image import DockerImage

        image = DockerImage(
            path=str(DOCKER_DIR), dockerfile_path="postgres.Dockerfile",
            tag="axiom-cdc-postgres:15",
        )
        image.build()
        self.c = (
            DockerContainer(str(image))
            .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_exposed_ports(5432)
        )
        self.c.start()
        self.port = int(self.c.get_exposed_port(5432))
        _wait_pg(self.dsn)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def restart(self, mode: str = "fast") -> None:
        self.c.get_wrapped_container().restart()
        self.port = int(self.c.get_exposed_port(5432))
        _wait_pg(self.dsn)

    def destroy(self) -> None:
        self.c.stop()


class DockerRedis:
    """redis-server in a container (the official image)."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer

        self.c = DockerContainer("redis:7").with_exposed_ports(6379)
        self.c.start()
        self.port = int(self.c.get_exposed_port(6379))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self) -> None:
        self.c.get_wrapped_container().restart()
        self.port = int(self.c.get_exposed_port(6379))

    def destroy(self) -> None:
        self.c.stop()


def _wait_pg(dsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _backend() -> str:
    return os.environ.get("CDC_TEST_BACKEND", "local")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """Start one throwaway PostgreSQL (wal_level=logical, wal2json) for the session."""
    if _backend() == "docker":
        server: Any = DockerPostgres()
    else:
        server = LocalPostgres()
        server.init()
        server.start()
    assert server.port not in (5432, 6379)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    migrate.apply(_db_dsn(server, TEMPLATE_DB), SQL_DIR)
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """Start one throwaway redis-server (no persistence) for the session."""
    if _backend() == "docker":
        server: Any = DockerRedis()
    else:
        server = LocalRedis()
        server.start()
    assert server.port not in (5432, 6379)
    yield server
    server.destroy()


def _db_dsn(server: Any, dbname: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{server.port}/{dbname}"


@pytest.fixture
def pg_dsn(pg_server: Any) -> Iterator[str]:
    """Create a fresh, fully migrated database for one test and drop it afterwards."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield _db_dsn(pg_server, name)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,)
            )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    """Give a test an empty Redis."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def settings(pg_dsn: str, redis_url: str) -> Settings:
    """Settings pointing at this test's database and Redis, with a unique slot."""
    return Settings(
        database_url=pg_dsn,  # type: ignore[arg-type]
        redis_url=redis_url,  # type: ignore[arg-type]
        slot=f"cdc_test_{next(_counter)}",
    )


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    """A Redis client on the test Redis (responses decoded)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """Run `cdc ...` in-process against this test's servers (tests/opsutil.Cli)."""
    return Cli(settings, monkeypatch, capsys)


# The developer's CDC_* settings, as the shell gave them when pytest loaded this plugin;
# CDC_TEST_BACKEND chooses the harness and stays. (What a test module sets on purpose, such
# as the deploy stack's passwords, is not the shell's and is kept.)
SHELL_CDC = frozenset(
    k for k in os.environ if k.startswith("CDC_") and k != "CDC_TEST_BACKEND"
)


@pytest.fixture(autouse=True)
def clean_cdc_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every test an environment without the developer's CDC_* settings.

    Subprocesses already get only what relay_env() passes; in-process Settings() must not
    pick up a CDC_DATABASE_URL or CDC_REDIS_URL that points at the machine's own servers.
    """
    for key in SHELL_CDC:
        monkeypatch.delenv(key, raising=False)

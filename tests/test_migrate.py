"""Migrations: idempotent by hand, recorded, tamper-evident, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.pg import migrate
from cdc.settings import SQL_DIR


def cdc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=120,
    )


@pytest.fixture
def empty_db(pg_server: Any) -> str:
    name = "t_empty_migrate"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"


def test_every_file_is_stamped() -> None:
    for mig in migrate.load(SQL_DIR):
        assert mig.stamped == mig.checksum, f"run `cdc migrate --stamp` for {mig.path.name}"


def test_migrate_twice_applies_nothing_the_second_time(empty_db: str) -> None:
    first = cdc("migrate", CDC_DATABASE_URL=empty_db)
    assert first.returncode == 0, first.stderr
    assert "applied 001_event_outbox.sql" in first.stdout
    second = cdc("migrate", CDC_DATABASE_URL=empty_db)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout
    status = cdc("migrate", "--status", CDC_DATABASE_URL=empty_db)
    assert "pending" not in status.stdout and "001_event_outbox.sql" in status.stdout


def test_every_migration_applies_twice_by_hand_and_agrees_with_cdc(empty_db: str) -> None:
    for _ in range(2):
        for mig in migrate.load(SQL_DIR):
            proc = subprocess.run(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_db, "-f", str(mig.path)],
                capture_output=True, text=True,
            )
            assert proc.returncode == 0, f"{mig.path.name}: {proc.stderr}"
    states = migrate.status(empty_db, SQL_DIR)
    assert all(s.applied_at is not None for s in states)
    assert migrate.apply(empty_db, SQL_DIR) == []


def test_tampered_applied_file_stops_and_names_it(empty_db: str, tmp_path: Path) -> None:
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    assert cdc("migrate", CDC_DATABASE_URL=empty_db, CDC_MIGRATIONS_DIR=str(sql)).returncode == 0
    target = sql / "001_event_outbox.sql"
    target.write_text(target.read_text().replace("-- 001:", "-- 001 (edited):", 1))
    proc = cdc("migrate", CDC_DATABASE_URL=empty_db, CDC_MIGRATIONS_DIR=str(sql))
    assert proc.returncode != 0
    assert "001_event_outbox.sql" in proc.stderr


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("not a dsn at all", 2),
        ("postgresql:/nobody:s3cret@db/nodb", 2),  # libpq would echo this one back
        ("postgresql://nobody:s3cret@127.0.0.1:1/nodb", 1),
    ],
)
def test_bad_database_url_is_one_line_naming_the_setting(url: str, code: int) -> None:
    proc = cdc("migrate", CDC_DATABASE_URL=url)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "CDC_DATABASE_URL" in lines[0]
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr

"""Plain-SQL migrations in sql/NNN_name.sql, applied with psql and recorded by themselves.

Each file ends with a `-- cdc:record` marker and an INSERT into `cdc_schema_migrations`
that carries the sha256 of everything above the marker, so `psql -f` by hand and
`cdc migrate` record the same thing. An applied file whose content changed stops the run.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc.errors import ConfigError, MigrationError
from cdc.pg import db

MARKER = "-- cdc:record"
FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
RECORD_RE = re.compile(r"VALUES \((\d+), '([a-z0-9_]+)', '([^']*)'\)")
LOCK_KEY = 0x0CDC_3161


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    checksum: str  # sha256 of the body above the marker
    stamped: str  # checksum written in the file's record statement


@dataclass(frozen=True, slots=True)
class State:
    """A migration and whether (and when) it was applied."""

    migration: Migration
    applied_at: datetime | None


def body_checksum(text: str) -> str:
    """Return the sha256 of the part of a migration above its record marker."""
    body, _, _ = text.partition(MARKER)
    return hashlib.sha256(body.encode()).hexdigest()


def load(directory: Path) -> list[Migration]:
    """Read every NNN_name.sql file in `directory`, in version order."""
    if not directory.is_dir():
        raise ConfigError(
            f"migrations directory {directory} not found", hint="set CDC_MIGRATIONS_DIR"
        )
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        text = path.read_text()
        rec = RECORD_RE.search(text.partition(MARKER)[2])
        if MARKER not in text or not rec:
            raise MigrationError(f"{path.name}: no '{MARKER}' INSERT at the end of the file")
        version, name = int(m.group(1)), m.group(2)
        if (int(rec.group(1)), rec.group(2)) != (version, name):
            raise MigrationError(f"{path.name}: its record names ({rec.group(1)}, {rec.group(2)})")
        found.append(Migration(version, name, path, body_checksum(text), rec.group(3)))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {directory}")
    return found


def stamp(directory: Path) -> list[Path]:
    """Write each file's body checksum into its record statement; return the files changed."""
    changed = []
    for mig in load(directory):
        if mig.stamped != mig.checksum:
            text = mig.path.read_text()
            body, marker, record = text.partition(MARKER)
            record = RECORD_RE.sub(
                f"VALUES ({mig.version}, '{mig.name}', '{mig.checksum}')", record, count=1
            )
            mig.path.write_text(body + marker + record)
            changed.append(mig.path)
    return changed


def _applied(conn: db.Conn) -> dict[int, tuple[str, datetime]]:
    exists = conn.execute("SELECT to_regclass('public.cdc_schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return {}
    rows = conn.execute("SELECT version, checksum, applied_at FROM public.cdc_schema_migrations")
    return {int(v): (str(c), a) for v, c, a in rows}


def status(dsn: db.Dsn, directory: Path) -> list[State]:
    """Return every migration with its applied time (None when pending)."""
    migrations = load(directory)
    with db.connect(dsn) as conn:
        applied = _applied(conn)
    return [State(m, applied[m.version][1] if m.version in applied else None) for m in migrations]


def _check_unchanged(migrations: list[Migration], applied: dict[int, tuple[str, datetime]]) -> None:
    for mig in migrations:
        if mig.version in applied and applied[mig.version][0] != mig.checksum:
            raise MigrationError(
                f"{mig.path.name} was changed after it was applied "
                f"(recorded sha256 {applied[mig.version][0][:12]}, file {mig.checksum[:12]})",
                hint=f"restore {mig.path.name} and put the change in a new migration file",
            )


def apply(dsn: db.Dsn, directory: Path) -> list[Migration]:
    """Apply every pending migration with psql --single-transaction; return those applied."""
    migrations = load(directory)
    done: list[Migration] = []
    with db.connect(dsn) as conn:
        conn.autocommit = True
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        applied = _applied(conn)
        _check_unchanged(migrations, applied)
        for mig in migrations:
            if mig.version in applied:
                continue
            if mig.stamped != mig.checksum:
                raise MigrationError(
                    f"{mig.path.name}: its recorded checksum does not match its content",
                    hint="run `cdc migrate --stamp` after editing an unapplied migration",
                )
            run_psql(dsn, mig.path)
            done.append(mig)
    return done


def run_psql(dsn: db.Dsn, path: Path) -> None:
    """Run one SQL file through psql in a single transaction, password kept out of argv."""
    try:
        params = conninfo_to_dict(db.reveal(dsn))
    except psycopg.ProgrammingError:  # libpq's message would echo the DSN, password included
        raise ConfigError("CDC_DATABASE_URL is not a valid PostgreSQL DSN") from None
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    cmd = [
        "psql", "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
        "-d", make_conninfo("", **params), "-f", str(path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MigrationError(f"{path.name} failed: {proc.stderr.strip()}")

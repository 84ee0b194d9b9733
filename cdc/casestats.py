"""Case statistics for Vision: read them as Vision does, check them, repair drift.

The counters and the view live in PostgreSQL (sql/002_case_stats.sql); this module only
reads and calls the maintenance functions. psycopg errors become cdc.errors here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import errors as pg_errors

from cdc import db
from cdc.errors import ConfigError, MigrationError, SourceError

READER_ROLE = "vision_reader"
ADMIN_ROLE = "vision_admin"
ACTIVE_STATUS = "IN_PROGRESS"

Counts = dict[str, int]  # status -> cases


@dataclass(frozen=True, slots=True)
class TenantStats:
    """One tenant's figures, the shape of the seed's /api/v1/cases/stats."""

    total_cases: int
    active_cases: int

    def as_dict(self) -> dict[str, int]:
        """Return the response body."""
        return {"total_cases": self.total_cases, "active_cases": self.active_cases}


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A tenant whose per-status figures in the view differ from count(*)."""

    tenant_id: str
    view: Counts
    actual: Counts


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of comparing vision.case_stats with count(*) under one snapshot."""

    tenants: int
    cases: int
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when every tenant matches."""
        return not self.mismatches


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild changed."""

    corrected: int  # (tenant, status) counters that had drifted
    folded: int  # per-writer shard rows merged into the folded totals


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName,
            pg_errors.UndefinedFunction, pg_errors.UndefinedObject) as e:
        raise MigrationError(
            f"{what}: case statistics are not installed: {e}",
            hint="run `cdc migrate` (sql/002_case_stats.sql)",
        ) from None
    except pg_errors.InsufficientPrivilege as e:
        raise ConfigError(
            f"{what}: permission denied: {e}",
            hint=f"connect as a superuser or a member of {ADMIN_ROLE}/{READER_ROLE}",
        ) from None
    except psycopg.Error as e:
        raise SourceError(f"{what}: {e}", hint="check PostgreSQL and retry") from None


def tenant_stats(dsn: str, *, tenant_id: str) -> TenantStats:
    """Read one tenant's figures through the view as Vision does (role + app.tenant_id)."""
    with _translated("case-stats"), db.connect(dsn) as conn, conn.transaction():
        conn.execute(f"SET LOCAL ROLE {READER_ROLE}")
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
        row = conn.execute("SELECT total_cases, active_cases FROM vision.case_stats").fetchone()
    return TenantStats(int(row[0]), int(row[1])) if row else TenantStats(0, 0)


def verify(dsn: str) -> Report:
    """Compare the view with count(*) per tenant and status, both under one snapshot."""
    with _translated("stats verify"), db.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            admin = conn.execute("SELECT pg_has_role(%s, 'USAGE')", (ADMIN_ROLE,)).fetchone()
            if not admin or not admin[0]:
                raise ConfigError(
                    f"stats verify: this user is not in {ADMIN_ROLE}, so vision.case_stats shows it"
                    " one tenant at most",
                    hint=f"connect as a superuser or a member of {ADMIN_ROLE}",
                )
            actual: dict[str, Counts] = {}
            for tenant, status, n in conn.execute(
                "SELECT tenant_id, status, count(*) FROM core.core_case GROUP BY 1, 2"
            ):
                actual.setdefault(tenant, {})[status] = int(n)
            view: dict[str, Counts] = {
                tenant: {s: int(n) for s, n in by_status.items()}
                for tenant, by_status in conn.execute(
                    "SELECT tenant_id, by_status FROM vision.case_stats"
                )
            }
    mismatches = [
        Mismatch(t, view.get(t, {}), actual.get(t, {}))
        for t in sorted(view.keys() | actual.keys())
        if view.get(t, {}) != actual.get(t, {})
    ]
    cases = sum(sum(c.values()) for c in actual.values())
    return Report(tenants=len(actual), cases=cases, mismatches=mismatches)


def rebuild(dsn: str, *, fold_only: bool = False) -> Rebuilt:
    """Repair drift from count(*) and fold shard rows; safe while writers run."""
    with _translated("stats rebuild"), db.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        with conn.transaction():
            if fold_only:
                row = conn.execute("SELECT 0, core.fold_case_stats()").fetchone()
            else:
                row = conn.execute(
                    "SELECT corrected, folded FROM core.rebuild_case_stats()"
                ).fetchone()
    assert row is not None
    return Rebuilt(corrected=int(row[0]), folded=int(row[1]))

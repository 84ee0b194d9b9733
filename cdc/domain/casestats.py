"""Case statistics for Vision: read them as Vision does, check them, repair drift, bind tenants.

The counters and the view live in PostgreSQL (sql/002_case_stats.sql, sql/007: which role
reads which tenant); this module only reads, binds and calls the maintenance functions.
psycopg errors become cdc.errors here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import errors as pg_errors

from cdc.errors import ConfigError, MigrationError, SourceError
from cdc.pg import db

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


@dataclass(frozen=True, slots=True)
class Binding:
    """One row of vision.tenant_role: members of `role` read `tenant_id`."""

    role: str  # the role's name, or its OID when the role was dropped
    tenant_id: str
    bound_at: datetime
    exists: bool  # False: the role was dropped; the row binds nobody


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName,
            pg_errors.UndefinedFunction) as e:
        raise MigrationError(
            f"{what}: case statistics are not installed: {e}",
            hint="run `cdc migrate` (sql/002_case_stats.sql, sql/007_vision_tenant_binding.sql)",
        ) from None
    except pg_errors.UndefinedObject as e:
        if "role" in str(e):
            raise ConfigError(f"{what}: {e}", hint="create the role first (CREATE ROLE)") from None
        raise MigrationError(
            f"{what}: case statistics are not installed: {e}", hint="run `cdc migrate`"
        ) from None
    except pg_errors.InsufficientPrivilege as e:
        raise ConfigError(
            f"{what}: permission denied: {e}",
            hint=f"connect as a superuser or a member of {ADMIN_ROLE}/{READER_ROLE}",
        ) from None
    except psycopg.Error as e:
        raise SourceError(f"{what}: {e}", hint="check PostgreSQL and retry") from None


def tenant_stats(dsn: db.Dsn, *, tenant_id: str) -> TenantStats:
    """Read one tenant's figures through the view, as vision_admin narrowed by app.tenant_id."""
    with _translated("case-stats"), db.connect(dsn) as conn, conn.transaction():
        conn.execute(f"SET LOCAL ROLE {ADMIN_ROLE}")
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
        row = conn.execute("SELECT total_cases, active_cases FROM vision.case_stats").fetchone()
    return TenantStats(int(row[0]), int(row[1])) if row else TenantStats(0, 0)


def verify(dsn: db.Dsn) -> Report:
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
            conn.execute("SELECT set_config('app.tenant_id', '', true)")  # would narrow the view
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


def rebuild(dsn: db.Dsn, *, fold_only: bool = False) -> Rebuilt:
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


def bind(dsn: db.Dsn, role: str, tenant_id: str) -> bool:
    """Let members of `role` read `tenant_id`; return False when it already could."""
    if not tenant_id.strip():
        raise ConfigError("vision bind: the tenant id is empty")
    with _translated("vision bind"), db.connect(dsn) as conn, conn.transaction():
        _check_role(conn, role)
        row = conn.execute(
            "INSERT INTO vision.tenant_role (role_name, tenant_id)"
            " VALUES (to_regrole(%s), %s) ON CONFLICT DO NOTHING RETURNING 1",
            (role, tenant_id),
        ).fetchone()
    return row is not None


def unbind(dsn: db.Dsn, role: str, tenant_id: str | None = None) -> int:
    """Take `tenant_id` (every tenant when None) away from `role`; return rows removed.

    `role` may be a name or, for a dropped role, the OID `cdc vision list` shows.
    """
    with _translated("vision unbind"), db.connect(dsn) as conn, conn.transaction():
        cur = conn.execute(
            "DELETE FROM vision.tenant_role WHERE (role_name::oid::text = %s"
            " OR role_name = to_regrole(%s)) AND (%s::text IS NULL OR tenant_id = %s)",
            (role, role, tenant_id, tenant_id),
        )
        return cur.rowcount


def bindings(dsn: db.Dsn) -> list[Binding]:
    """Return every binding by role and tenant."""
    with _translated("vision list"), db.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT b.role_name::text, b.tenant_id, b.bound_at, r.oid IS NOT NULL"
            " FROM vision.tenant_role b LEFT JOIN pg_roles r ON r.oid = b.role_name"
            " ORDER BY 1, 2"
        ).fetchall()
    return [Binding(*r) for r in rows]


def _check_role(conn: db.Conn, role: str) -> None:
    row = conn.execute("SELECT to_regrole(%s) IS NOT NULL", (role,)).fetchone()
    if not row or not row[0]:
        raise ConfigError(f"vision bind: role {role!r} does not exist",
                          hint=f"CREATE ROLE {role} LOGIN IN ROLE {READER_ROLE}")

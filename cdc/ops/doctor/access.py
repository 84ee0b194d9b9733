"""What the relay's role may do: REPLICATION, the privileges it uses, the migrations."""

from __future__ import annotations

import psycopg

from cdc.errors import CdcError
from cdc.ops.doctor.findings import FAIL, OK, Finding
from cdc.pg import db, migrate, privileges
from cdc.settings import Settings


def role(conn: db.Conn) -> Finding:
    row = conn.execute(
        "SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    name, superuser, replication = row
    if superuser or replication:
        what = "superuser" if superuser else "REPLICATION"
        return Finding("role", OK, f"role {name} has {what}")
    return Finding(
        "role", FAIL, f"role {name} lacks REPLICATION (needed to create and stream the slot)",
        f'ALTER ROLE "{name}" WITH REPLICATION;',
    )


def _missing(conn: db.Conn, role: str, need: privileges.Need) -> list[str]:
    """Return the privileges of `need` that `role` lacks."""
    return [
        p for p in need.privileges
        if not conn.execute(privileges.CHECK_SQL[need.kind], (role, need.name, p)).fetchone()[0]  # type: ignore[index]
    ]


def grants(conn: db.Conn, settings: Settings, user: str) -> list[Finding]:
    """Check every privilege the relay uses; name the one statement that gives them."""
    group = privileges.GROUP_ROLE
    row = conn.execute(
        "SELECT to_regrole(%s) IS NOT NULL, pg_has_role(current_user, oid, 'USAGE')"
        " FROM pg_roles WHERE rolname = %s", (group, group),
    ).fetchone()
    group_exists, member = (bool(row[0]), bool(row[1])) if row else (False, False)
    lacking: list[tuple[privileges.Need, list[str]]] = []
    for need in privileges.relay_needs(settings.outbox_table):
        exists = conn.execute(privileges.EXISTS_SQL[need.kind], (need.name,)).fetchone()
        if not exists or not exists[0]:
            continue  # the migrations check reports missing tables
        missing = _missing(conn, user, need)
        if missing:
            lacking.append((need, missing))
    if not lacking:
        return [Finding("grants", OK, f"role {user} has every privilege the relay uses")]
    what = "; ".join(f"{', '.join(m)} on {n.name}" for n, m in lacking)
    group_has_all = group_exists and all(
        not _missing(conn, group, n) for n, _ in lacking
    )
    if group_has_all and not member:
        fix = f'GRANT {group} TO "{user}";'
    elif member:  # the group role itself lost a privilege: give it back
        fix = " ".join(n.grant(_missing(conn, group, n) or m, group) for n, m in lacking)
    else:
        fix = " ".join(n.grant(m, user) for n, m in lacking)
        if not group_exists:
            fix += f" (or `cdc migrate`, which creates {group}, then GRANT {group} TO \"{user}\";)"
    return [Finding("grants", FAIL, f"role {user} lacks {what}", fix)]


def migrations(dsn: db.Dsn, settings: Settings, user: str) -> Finding:
    try:
        states = migrate.status(dsn, settings.migrations_dir)
    except CdcError as e:
        return Finding("migrations", FAIL, str(e), e.hint or "cdc migrate")
    except psycopg.errors.InsufficientPrivilege as e:
        return Finding(
            "migrations", FAIL, f"cannot read the migration record: {e}",
            f'GRANT SELECT ON public.cdc_schema_migrations TO "{user}";',
        )
    pending = [s.migration.path.name for s in states if s.applied_at is None]
    if pending:
        return Finding(
            "migrations", FAIL, f"{len(pending)} migration(s) pending: {', '.join(pending)}",
            "cdc migrate",
        )
    return Finding("migrations", OK, f"all {len(states)} migrations applied")

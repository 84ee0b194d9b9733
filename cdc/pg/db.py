"""PostgreSQL connections with library errors translated at the edge."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg import sql

from cdc.errors import CdcError, ConfigError, MigrationError, SourceError
from cdc.settings import redact

Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]

PRIVILEGE_HINT = (
    "GRANT cdc_relay TO <the relay's login role>; (`cdc migrate` creates cdc_relay;"
    " `cdc doctor` names each missing privilege)"
)


def translate(e: psycopg.Error, what: str = "PostgreSQL") -> CdcError:
    """Return the CdcError for a psycopg error: privilege and schema problems stop the relay."""
    text = " ".join(f"{what}: {e}".split())
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return ConfigError(text, hint=PRIVILEGE_HINT)
    if isinstance(e, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return MigrationError(text, hint="run `cdc migrate`, and check CDC_OUTBOX_TABLE")
    return SourceError(text)


def table_ident(table: str, relation: str | None = None) -> sql.Identifier:
    """Return `schema.name` quoted; with `relation`, that table in the same schema."""
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, relation or name)


def connect(
    dsn: str,
    *,
    autocommit: bool = False,
    hint: str = "check CDC_DATABASE_URL and that PostgreSQL is running",
    **kwargs: Any,
) -> Conn:
    """Open a connection; a bad DSN or an unreachable server becomes a one-line error."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10, **kwargs)
    except psycopg.ProgrammingError:
        raise ConfigError(
            "CDC_DATABASE_URL is not a valid PostgreSQL DSN",  # libpq's text echoes it
            hint="use postgresql://user:password@host:port/dbname",
        ) from None
    except psycopg.OperationalError as e:
        text = " ".join(str(e).split())
        if "must be superuser or replication role" in text:  # retrying cannot fix it
            raise ConfigError(
                f"CDC_DATABASE_URL: {redact(dsn)}: the role may not stream: {text}",
                hint="ALTER ROLE <the relay's login role> WITH REPLICATION;",
            ) from None
        if "no pg_hba.conf entry" in text or "password authentication failed" in text:
            raise ConfigError(f"CDC_DATABASE_URL: cannot connect to {redact(dsn)}: {text}",
                              hint=hint) from None
        raise SourceError(
            f"CDC_DATABASE_URL: cannot connect to {redact(dsn)}: {e}", hint=hint
        ) from None

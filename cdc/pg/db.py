"""PostgreSQL connections with library errors translated at the edge.

CDC_DATABASE_URL travels as a SecretStr and is unwrapped only here, where a connection is
made (and in `pg.migrate.run_psql`, which hands psql its password through the environment).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg import sql
from pydantic import SecretStr

from cdc.errors import CdcError, ConfigError, MigrationError, SourceError
from cdc.settings import redact

Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]
Dsn: TypeAlias = str | SecretStr  # CDC_DATABASE_URL as settings hold it, or a plain DSN

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


def reveal(dsn: Dsn) -> str:
    """Return the DSN itself: for the functions that open connections, and for no one else."""
    return dsn.get_secret_value() if isinstance(dsn, SecretStr) else dsn


def redacted(dsn: Dsn) -> str:
    """Return the DSN with any password replaced, safe to log."""
    return redact(reveal(dsn))


def connect(
    dsn: Dsn,
    *,
    autocommit: bool = False,
    hint: str = "check CDC_DATABASE_URL and that PostgreSQL is running",
    connect_timeout: int = 10,
    **kwargs: Any,
) -> Conn:
    """Open a connection; a bad DSN or an unreachable server becomes a one-line error."""
    dsn = reveal(dsn)
    try:
        return psycopg.connect(
            dsn, autocommit=autocommit, connect_timeout=connect_timeout, **kwargs
        )
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

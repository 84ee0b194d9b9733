"""Weaver's data-source registry; connection_config is sealed with AES-GCM before it is stored.

The sealed value is bound to its row (tenant and id), so it cannot be moved to another
row. `rotate_key` re-seals every row under a new key in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
from psycopg.rows import dict_row, tuple_row

from cdc.domain.stores.base import Conn, Pool, as_uuid, transaction
from cdc.domain.stores.crypto import Cipher, sealed_key_id
from cdc.errors import DecryptError, StoreError

DS_TYPES = ("postgres", "mysql", "oracle")
COLUMNS = "id, tenant_id, name, ds_type, connection_config, status, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class DataSource:
    """One registered data source, its connection_config decrypted (never in repr)."""

    id: UUID
    tenant_id: str
    name: str
    ds_type: str
    status: str
    created_at: datetime
    updated_at: datetime
    connection_config: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `rotate_key` did."""

    rotated: int  # rows re-sealed under the new key
    unchanged: int  # rows that already used the new key


def _aad(tenant_id: str, ds_id: UUID) -> bytes:
    return f"weaver.datasource:{tenant_id}:{ds_id}".encode()


def seal_config(cipher: Cipher, tenant_id: str, ds_id: UUID, config: Mapping[str, Any]) -> bytes:
    """Serialise and encrypt one connection_config for its row."""
    if not isinstance(config, Mapping):
        raise StoreError("connection_config must be a mapping")
    try:
        plain = orjson.dumps(dict(config), option=orjson.OPT_SORT_KEYS)
    except TypeError as e:
        raise StoreError(f"connection_config is not JSON-serialisable: {e}") from None
    return cipher.seal(plain, aad=_aad(tenant_id, ds_id))


def open_config(cipher: Cipher, tenant_id: str, ds_id: UUID, sealed: bytes) -> dict[str, Any]:
    """Decrypt one connection_config; a wrong key raises DecryptError."""
    plain = cipher.open(sealed, aad=_aad(tenant_id, ds_id),
                        what=f"connection_config of data source {ds_id}")
    config: dict[str, Any] = orjson.loads(plain)
    return config


def rotate_key(conn: Conn, old: Cipher, new: Cipher) -> Rotation:
    """Re-seal every connection_config under `new`, all rows or none.

    Rows already under `new` are left alone, so an interrupted rotation can be run again.
    A row that neither key opens raises DecryptError and nothing changes. Writers are
    blocked (readers are not) until the transaction ends.
    """
    if old.key_id == new.key_id:
        raise StoreError(
            "the new key is the key in use", hint="generate one with `cdc weaver gen-key`"
        )
    updates: list[tuple[bytes, UUID]] = []
    unchanged = 0
    try:
        with conn.transaction():
            conn.execute("LOCK TABLE weaver.datasource IN SHARE ROW EXCLUSIVE MODE")
            rows = conn.cursor(row_factory=tuple_row).execute(
                "SELECT id, tenant_id, connection_config FROM weaver.datasource ORDER BY id"
            ).fetchall()
            for ds_id, tenant_id, sealed in rows:
                if sealed_key_id(bytes(sealed)) == new.key_id:
                    unchanged += 1
                    continue
                config = open_config(old, tenant_id, ds_id, bytes(sealed))
                updates.append((seal_config(new, tenant_id, ds_id, config), ds_id))
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE weaver.datasource SET connection_config = %s WHERE id = %s", updates
                )
    except psycopg.Error as e:
        raise StoreError(f"key rotation failed, nothing changed: {e}") from None
    return Rotation(rotated=len(updates), unchanged=unchanged)


class DataSourceStore:
    """Register, change, read and deactivate a tenant's data sources."""

    def __init__(self, pool: Pool, *, cipher: Cipher) -> None:
        self._pool = pool
        self._cipher = cipher

    def register(
        self,
        tenant_id: str,
        name: str,
        ds_type: str,
        connection_config: Mapping[str, Any],
        *,
        conn: Conn | None = None,
    ) -> DataSource:
        """Add an ACTIVE data source; its name must be new for the tenant."""
        _check_type(ds_type)
        if not tenant_id or not name:
            raise StoreError("a data source needs a tenant_id and a name")
        ds_id = uuid4()
        sealed = seal_config(self._cipher, tenant_id, ds_id, connection_config)
        with transaction(self._pool, conn) as c:
            try:
                row = c.cursor(row_factory=dict_row).execute(
                    "INSERT INTO weaver.datasource"
                    " (id, tenant_id, name, ds_type, connection_config)"
                    f" VALUES (%s, %s, %s, %s, %s) RETURNING {COLUMNS}",
                    (ds_id, tenant_id, name, ds_type, sealed),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise _duplicate(tenant_id, name) from None
        assert row is not None
        return self._decode(row)

    def update(
        self,
        tenant_id: str,
        ds_id: UUID | str,
        *,
        name: str | None = None,
        ds_type: str | None = None,
        connection_config: Mapping[str, Any] | None = None,
        conn: Conn | None = None,
    ) -> DataSource:
        """Change the given fields of a data source."""
        did = as_uuid(ds_id, "data source")
        if ds_type is not None:
            _check_type(ds_type)
        sealed = None
        if connection_config is not None:
            sealed = seal_config(self._cipher, tenant_id, did, connection_config)
        with transaction(self._pool, conn) as c:
            try:
                row = c.cursor(row_factory=dict_row).execute(
                    f"UPDATE weaver.datasource SET name = coalesce(%s, name),"
                    f" ds_type = coalesce(%s, ds_type),"
                    f" connection_config = coalesce(%s, connection_config), updated_at = now()"
                    f" WHERE id = %s AND tenant_id = %s RETURNING {COLUMNS}",
                    (name, ds_type, sealed, did, tenant_id),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise _duplicate(tenant_id, name or "") from None
        if row is None:
            raise StoreError(f"data source {did} not found for tenant {tenant_id}")
        return self._decode(row)

    def deactivate(
        self, tenant_id: str, ds_id: UUID | str, *, conn: Conn | None = None
    ) -> DataSource:
        """Mark a data source INACTIVE (it stays registered)."""
        did = as_uuid(ds_id, "data source")
        with transaction(self._pool, conn) as c:
            row = c.cursor(row_factory=dict_row).execute(
                f"UPDATE weaver.datasource SET status = 'INACTIVE', updated_at = now()"
                f" WHERE id = %s AND tenant_id = %s RETURNING {COLUMNS}", (did, tenant_id),
            ).fetchone()
        if row is None:
            raise StoreError(f"data source {did} not found for tenant {tenant_id}")
        return self._decode(row)

    def get(self, tenant_id: str, ds_id: UUID | str) -> DataSource | None:
        """Return one data source of `tenant_id`, or None."""
        did = as_uuid(ds_id, "data source")
        with transaction(self._pool) as c:
            row = c.cursor(row_factory=dict_row).execute(
                f"SELECT {COLUMNS} FROM weaver.datasource WHERE id = %s AND tenant_id = %s",
                (did, tenant_id),
            ).fetchone()
        return None if row is None else self._decode(row)

    def list_sources(self, tenant_id: str, *, include_inactive: bool = False) -> list[DataSource]:
        """Return a tenant's data sources by name (ACTIVE only unless asked)."""
        with transaction(self._pool) as c:
            rows = c.cursor(row_factory=dict_row).execute(
                f"SELECT {COLUMNS} FROM weaver.datasource WHERE tenant_id = %s"
                " AND (%s OR status = 'ACTIVE') ORDER BY name",
                (tenant_id, include_inactive),
            ).fetchall()
        return [self._decode(r) for r in rows]

    def rotate_key(self, new: Cipher) -> Rotation:
        """Re-seal every row under `new` and use `new` from now on."""
        with transaction(self._pool) as c:
            done = rotate_key(c, self._cipher, new)
        self._cipher = new
        return done

    def _decode(self, row: dict[str, Any]) -> DataSource:
        sealed = bytes(row.pop("connection_config"))
        config = open_config(self._cipher, row["tenant_id"], row["id"], sealed)
        return DataSource(connection_config=config, **row)


def _check_type(ds_type: str) -> None:
    if ds_type not in DS_TYPES:
        raise StoreError(f"unknown ds_type {ds_type!r}; one of {', '.join(DS_TYPES)}")


def _duplicate(tenant_id: str, name: str) -> StoreError:
    return StoreError(f"data source {name!r} already exists for tenant {tenant_id}",
                      hint="pick another name or update the existing data source")


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What `check_key` found: which key seals each row, and the rows `cipher` cannot open."""

    by_key: dict[str, int]  # key id (hex, or "unknown") -> rows sealed under it
    failed: list[DecryptError]
    total: int


def check_key(conn: Conn, cipher: Cipher) -> KeyCheck:
    """Try `cipher` on every connection_config; count the rows under each key id."""
    try:
        rows = conn.cursor(row_factory=tuple_row).execute(
            "SELECT id, tenant_id, connection_config FROM weaver.datasource"
        ).fetchall()
    except psycopg.Error as e:
        raise StoreError(f"cannot read weaver.datasource: {e}", hint="run `cdc migrate`") from None
    by_key: dict[str, int] = {}
    failed: list[DecryptError] = []
    for ds_id, tenant_id, sealed in rows:
        key_id = sealed_key_id(bytes(sealed))
        hex_id = key_id.hex() if key_id else "unknown"
        by_key[hex_id] = by_key.get(hex_id, 0) + 1
        try:
            open_config(cipher, tenant_id, ds_id, bytes(sealed))
        except DecryptError as e:
            failed.append(e)
    return KeyCheck(by_key, failed, len(rows))

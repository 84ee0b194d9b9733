"""devkit.localservers reads PG_MAJOR when a server is made, not when it is imported."""

from __future__ import annotations

import pytest

from devkit import localservers


def test_pg_major_is_read_when_a_server_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_MAJOR", "99")  # after the import: an import-time read misses it
    assert localservers.pg_major() == "99"
    with pytest.raises(FileNotFoundError, match="/usr/lib/postgresql/99/bin/initdb"):
        localservers.LocalPostgres()
    monkeypatch.delenv("PG_MAJOR")
    assert localservers.pg_major() == localservers.DEFAULT_PG_MAJOR
    with pytest.raises(FileNotFoundError, match="/usr/lib/postgresql/98/bin"):
        localservers.pg_bindir("98")  # an explicit major wins

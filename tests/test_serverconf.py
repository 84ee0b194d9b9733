"""Server settings in one place: list parsing, and doctor's plugin fix applied on a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from pydantic import SecretStr

from cdc.ops import doctor
from cdc.pg import serverconf
from cdc.settings import Settings
from devkit.localservers import LocalPostgres, pg_bindir

DEBIAN_DEFAULT = "output_plugin_libraries = 'pgoutput, test_decoding'"


def test_parse_list_reads_quotes_as_the_server_does() -> None:
    assert serverconf.parse_list("pgoutput, test_decoding") == ["pgoutput", "test_decoding"]
    assert serverconf.parse_list('"pgoutput,test_decoding,wal2json"') == [
        "pgoutput,test_decoding,wal2json"
    ]
    assert serverconf.parse_list(' A , "b""c" ,, d') == ["a", 'b"c', "d"]
    assert serverconf.parse_list("") == []
    assert serverconf.with_wal2json('"pgoutput,test_decoding"') == [
        "pgoutput", "test_decoding", "wal2json"
    ]
    assert serverconf.alter_plugins(["pgoutput", "odd,name"]) == (
        'ALTER SYSTEM SET output_plugin_libraries = pgoutput, "odd,name"'
    )


@pytest.fixture
def debian_default() -> Iterator[LocalPostgres]:
    """A server with Debian's default output_plugin_libraries (wal2json not allowed)."""
    if not serverconf.knows_plugin_libraries(pg_bindir()):
        pytest.skip("this PostgreSQL build has no output_plugin_libraries setting")
    with LocalPostgres(extra_conf=DEBIAN_DEFAULT) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE relay_probe LOGIN REPLICATION")
        yield pg


def create_slot(dsn: str, plugin: str) -> str:
    """Create and drop a temporary slot with `plugin`; return '' or the error."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot('probe', %s, true)",
                         (plugin,))
            conn.execute("SELECT pg_drop_replication_slot('probe')")  # not at backend exit
        return ""
    except psycopg.Error as e:
        return str(e).strip()


def apply(su: str, statements: list[str]) -> None:
    """Run `statements` as superuser; wait until new sessions see the reloaded setting."""
    with psycopg.connect(su, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
        wanted = conn.execute(
            "SELECT setting FROM pg_file_settings WHERE name = 'output_plugin_libraries'"
            " ORDER BY seqno DESC LIMIT 1").fetchone()
    assert wanted is not None
    deadline = time.monotonic() + 10
    while True:  # pg_reload_conf() only signals the postmaster
        with psycopg.connect(su, autocommit=True) as conn:
            row = conn.execute("SHOW output_plugin_libraries").fetchone()
        if row and serverconf.parse_list(row[0]) == serverconf.parse_list(wanted[0]):
            return
        assert time.monotonic() < deadline, (row, wanted)
        time.sleep(0.05)


def finding(dsn: str, check: str = "output_plugin_libraries") -> doctor.Finding:
    settings = Settings(database_url=SecretStr(dsn))
    return next(f for f in doctor.check_postgres(settings) if f.check == check)


def test_doctor_fix_applied_as_printed_makes_wal2json_creatable(
    debian_default: LocalPostgres,
) -> None:
    su, role = debian_default.dsn, debian_default.dsn.replace("postgres@", "relay_probe@")
    statement = "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json"
    assert "may not be used as an output plugin" in create_slot(role, "wal2json")
    probe = finding(role, "wal2json")  # the role cannot read the setting; its probe fails
    assert probe.level == doctor.FAIL and f"as a superuser: {statement};" in probe.fix
    found = finding(su)
    assert found.level == doctor.FAIL
    assert found.fix == f"{statement}; SELECT pg_reload_conf();"

    apply(su, [  # the old, quoted fix: one element
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput,test_decoding,wal2json'",
        "SELECT pg_reload_conf()",
    ])
    assert "may not be used" in create_slot(role, "wal2json")
    assert "may not be used" in create_slot(role, "pgoutput")
    assert finding(su).level == doctor.FAIL  # doctor is not fooled by the quotes
    assert finding(role, "wal2json").level == doctor.FAIL

    apply(su, [part.rstrip(";") for part in finding(su).fix.split("; ")])  # as printed
    assert create_slot(role, "wal2json") == ""
    assert create_slot(role, "pgoutput") == ""
    assert finding(su).level == doctor.OK
    assert finding(role, "wal2json").level == doctor.OK

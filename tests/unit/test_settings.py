"""Settings are checked when built (routes, consumer groups), expose one parsed router, and
never show a secret: not in repr, dumps, logs, nor connection errors. Only the functions that
make connections unwrap a SecretStr (an AST check names them)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from cdc.errors import CdcError, ConfigError
from cdc.pg import db
from cdc.settings import Settings
from cdc.streams import redisconn, urls

PKG = Path(__file__).resolve().parents[2] / "cdc"
PASSWORD = "s3cr3t-pa55"
# Where a secret may be unwrapped, and why; anything else passes the SecretStr on.
UNWRAP_ALLOWED = {
    "cdc/pg/db.py": "reveal: the one place a PostgreSQL DSN is unwrapped (connect)",
    "cdc/streams/urls.py": "reveal: the one place a Redis URL is unwrapped (redisconn)",
    "cdc/domain/stores/crypto.py": "Cipher.from_secret: the weaver key is used, not sent",
}
REVEAL_ALLOWED = {  # the connection makers, the URL parsing, the psql env
    "cdc/pg/db.py", "cdc/streams/redisconn.py", "cdc/streams/urls.py", "cdc/pg/migrate.py",
}


def test_bad_routes_or_groups_fail_when_settings_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDC_ROUTES", "*axiom:core:events")
    with pytest.raises(ConfigError, match="CDC_ROUTES: rule '\\*axiom:core:events'"):
        Settings()
    monkeypatch.setenv("CDC_ROUTES", "*=axiom:core:events/8")
    for bad in ("synapse_group,,watch_cep_group", "a b", "a,a"):
        monkeypatch.setenv("CDC_CONSUMER_GROUPS", bad)
        with pytest.raises(ConfigError, match="CDC_CONSUMER_GROUPS"):
            Settings()
    monkeypatch.setenv("CDC_CONSUMER_GROUPS", " g1, g2 ")
    s = Settings()
    assert s.groups == ("g1", "g2")
    assert s.router.partitions == {"axiom:core:events": 8}


def test_one_router_is_parsed_and_a_copy_with_other_routes_gets_its_own() -> None:
    s = Settings()
    assert s.router is s.router
    assert s.router.streams() == ["axiom:watches", "axiom:workers", "axiom:core:events"]
    t = s.model_copy(update={"routes": "*=x/2", "consumer_groups": "g"})
    assert t.router.streams() == ["x:0", "x:1"] and t.groups == ("g",)
    assert s.router.streams()[0] == "axiom:watches" and s.groups[0] == "synapse_group"
    assert Settings(consumer_groups="").groups == ()


def test_secrets_never_show(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings(
        database_url=SecretStr(f"postgresql://relay:{PASSWORD}@127.0.0.1:1/db"),
        redis_url=SecretStr(f"redis://:{PASSWORD}@127.0.0.1:1/0"),
        weaver_secret_key=SecretStr(PASSWORD),
    )
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("cdc.test").info("settings: %s %r", s, s)
    shown = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), caplog.text,
             db.redacted(s.database_url), urls.redact_url(s.redis_url)]
    assert all(PASSWORD not in text for text in shown), shown
    # A failed connection names where it went, never with the password (port 1: refused).
    for connect in (lambda: db.connect(s.database_url, connect_timeout=2),
                    lambda: redisconn.connect(s.redis_url, timeout=2)):
        with pytest.raises(CdcError) as err:
            connect()
        text = f"{err.value} {err.value.hint}"
        assert "127.0.0.1" in text and PASSWORD not in text, text


def _calls(tree: ast.AST, name: str) -> bool:
    """Tell whether `tree` calls something named `name` (a function or a method)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == name) or (
                isinstance(f, ast.Name) and f.id == name
            ):
                return True
    return False


def test_only_the_connection_makers_unwrap_secrets() -> None:
    unwrap, reveal = set(), set()
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(PKG.parent).as_posix()
        if _calls(tree, "get_secret_value"):
            unwrap.add(rel)
        if _calls(tree, "reveal"):
            reveal.add(rel)
    assert len(list(PKG.rglob("*.py"))) > 30 and "cdc/pg/db.py" in unwrap  # the walk works
    assert unwrap == set(UNWRAP_ALLOWED), sorted(unwrap ^ set(UNWRAP_ALLOWED))
    assert reveal <= REVEAL_ALLOWED, sorted(reveal - REVEAL_ALLOWED)

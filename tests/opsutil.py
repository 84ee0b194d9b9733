"""Helpers for operator-command tests: run `cdc ...` in-process against the real servers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest

from cdc.cli import main
from cdc.settings import Settings
from tests.relayutil import relay_env


@dataclass
class Out:
    """Exit code and captured output of one command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


class Cli:
    """Call `cdc` in-process with CDC_* taken from `settings` (plus overrides)."""

    def __init__(
        self, settings: Settings, mp: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.settings = settings
        self.mp = mp
        self.capsys = capsys

    def __call__(self, *args: str, **env: str) -> Out:
        for key, value in relay_env(self.settings, **env).items():
            if key.startswith("CDC_"):
                self.mp.setenv(key, value)
        self.capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse usage errors
            code = int(e.code or 0)
        cap = self.capsys.readouterr()
        return Out(code, cap.out, cap.err)


def insert_at(
    dsn: str, rows: list[tuple[str, str, str, str]], *, status: str = "PENDING"
) -> list[str]:
    """Insert (tenant, event_type, payload, created_at) rows; return their ids in order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            str(conn.execute(
                "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
                " payload, created_at, status) VALUES (%s, 'case', 'a1', %s, %s, %s::timestamptz,"
                " %s) RETURNING id::text",
                (tenant, event_type, payload, created, status),
            ).fetchone()[0])  # type: ignore[index]
            for tenant, event_type, payload, created in rows
        ]

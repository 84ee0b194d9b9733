"""The command's surface: --version, --help with each command's CDC_* settings, JSON logs."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from cdc import cli
from cdc.settings import Settings
from tests.relayutil import cdc, insert_cases

COMMANDS = Path(__file__).resolve().parent.parent / "cdc" / "commands"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"cdc \(axiom-cdc\) \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_help_lists_each_commands_settings_with_defaults() -> None:
    top = cli.build_parser().format_help()
    assert "CDC_*" in top and "build settings once" not in top  # no developer docstring
    commands = subcommands()
    assert set(commands) <= set(cli.USES), set(commands) - set(cli.USES)
    for name, parser in commands.items():
        text = parser.format_help()
        for field in (*cli.USES[name], "log_format"):
            assert re.search(rf"CDC_{field.upper()} +default: \S", text), (name, field)
    run = commands["run"].format_help()
    assert "CDC_METRICS_ADDR             default: 127.0.0.1" in run
    assert "CDC_LOG_FORMAT               default: text" in run


def test_help_names_every_setting_a_command_module_reads() -> None:
    for path in COMMANDS.glob("*.py"):
        if path.stem == "__init__":
            continue
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"cdc.commands.{path.stem}").register(sub)
        used = set(re.findall(r"\bsettings\.([a-z_]+)\b", path.read_text()))
        used &= set(Settings.model_fields)
        listed = {f for name in sub.choices for f in cli.USES[name]}
        assert used <= listed, (path.name, used - listed)


def test_json_logs_one_object_a_line_with_slot_and_no_secret(settings: Settings) -> None:
    insert_cases(settings.database_url.get_secret_value(), 3)
    secret = "hunter2-not-logged"
    dsn = settings.database_url.get_secret_value().replace("postgres@", f"postgres:{secret}@")
    with_password = settings.model_copy(update={"database_url": SecretStr(dsn)})
    proc = cdc(with_password, "run", "--once", CDC_LOG_FORMAT="json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    records = [orjson.loads(x) for x in lines]  # every line is one JSON object
    assert len(records) >= 2
    for rec in records:
        assert {"ts", "level", "logger", "message", "slot"} <= set(rec), rec
        assert rec["slot"] == settings.slot
    assert any(r["message"].startswith("relay starting") for r in records)
    assert secret not in proc.stderr + proc.stdout
    bad = cdc(settings, "run", "--once", CDC_LOG_FORMAT="yaml", timeout=60)
    assert bad.returncode == 2 and "CDC_LOG_FORMAT" in bad.stderr


def test_shell_completion_offers_commands_and_options(tmp_path: Path) -> None:
    out = tmp_path / "completions"
    for line, wanted in (("cdc ru", {"run"}), ("cdc run --o", {"--once"}),
                         ("cdc d", {"doctor", "dlq"})):
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line,
               "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
        proc = subprocess.run([sys.executable, "-m", "cdc"], env=env, capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        got = set(out.read_text().replace("\x0b", " ").split())
        assert wanted <= got, (line, got)

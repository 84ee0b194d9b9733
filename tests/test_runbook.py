"""The runbook's commands: each parses, and each is exercised by some test against real servers."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cdc.cli import build_parser
from cdc.domain.stores import crypto

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
INCIDENTS = (
    "WAL piling up", "Slot lost after failover", "silently stalled", "Dead letters nobody",
    "Redis down or full", "crash-looping", "primary failover", "Re-creating a lost slot",
    "Rotating the Weaver", "Outbox table growing", "consumer lost data",
)


def runbook_commands() -> list[str]:
    """Return every `cdc ...` command in code blocks and inline code of the runbook."""
    text = RUNBOOK.read_text()
    found: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            m = re.search(r"(?:^|\s)(cdc\s[^|;&>]*)", line)
            if m:
                found.append(m.group(1).strip())
    found += [c.strip() for c in re.findall(r"`(cdc\s[^`]+)`", text)]
    return list(dict.fromkeys(found))


def command_path(cmd: str) -> tuple[str, ...]:
    """Return the subcommand words of `cmd` (without options and arguments)."""
    words = shlex.split(cmd)[1:]
    path = [words[0]]
    if len(words) > 1 and words[0] in ("slot", "dlq", "weaver") and not words[1].startswith("-"):
        path.append(words[1])
    return tuple(path)


def test_runbook_covers_every_incident() -> None:
    text = RUNBOOK.read_text()
    headings = [h for h in re.findall(r"^## (.+)$", text, flags=re.M)]
    for incident in INCIDENTS:
        assert any(incident.lower() in h.lower() for h in headings), incident
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        if section.startswith(("1.", "2.", "3.", "4.", "5.", "6.", "7.", "8.")):
            assert "**Symptoms.**" in section and "**Fix.**" in section, section[:40]


@pytest.mark.parametrize("cmd", runbook_commands())
def test_runbook_command_parses(cmd: str) -> None:
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert callable(args.func)


def test_every_runbook_command_is_exercised_by_a_test() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    paths = {command_path(c) for c in runbook_commands()}
    assert len(paths) >= 15
    missing = [
        " ".join(p) for p in sorted(paths)
        if ", ".join(f'"{w}"' for w in p) not in sources
    ]
    assert not missing, f"runbook commands no test runs: {missing}"


def test_weaver_gen_key_prints_a_usable_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc", "weaver", "gen-key"], capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert crypto.Cipher.from_secret(proc.stdout.strip()).key_id

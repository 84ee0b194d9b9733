"""The runbook's commands: each parses, each is run by a collected test, the first look runs."""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cdc.cli import build_parser
from cdc.domain.stores import crypto
from tests.opsutil import Cli

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


def string_runs(tree: ast.AST) -> list[tuple[str, ...]]:
    """Return the runs of consecutive string literals passed to calls or put in lists.

    `cli("dlq", "list")`, `cdc(s, "slot", "create")` and `[sys.executable, "-m", "cdc",
    "weaver", "gen-key"]` give ("dlq", "list"), ("slot", "create") and ("-m", "cdc", "weaver",
    "gen-key"); comments and docstrings give nothing.
    """
    runs: list[tuple[str, ...]] = []
    for node in ast.walk(tree):
        items: list[ast.expr] = []
        if isinstance(node, ast.Call):
            items = list(node.args)
        elif isinstance(node, ast.List | ast.Tuple):
            items = list(node.elts)
        run: list[str] = []
        for item in [*items, None]:
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                run.append(item.value)
            elif run:
                runs.append(tuple(run))
                run = []
    return runs


def invokes(run: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Tell whether a run of literals is the command `cdc <path> ...`."""
    n = len(path)
    return run[:n] == path or any(
        run[i] == "cdc" and run[i + 1:i + 1 + n] == path for i in range(len(run))
    )


@functools.cache
def literals_by_test() -> dict[str, list[tuple[str, ...]]]:
    """Return "file::test" -> the literal runs in that test function's own body."""
    out = {}
    for file in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                out[f"tests/{file.name}::{node.name}"] = string_runs(node)
    return out


def invoking_tests(path: tuple[str, ...]) -> set[str]:
    """Return "file::test" of each test function whose own body runs `cdc <path>`."""
    return {t for t, runs in literals_by_test().items() if any(invokes(r, path) for r in runs)}


def covering_files(by_path: dict[tuple[str, ...], set[str]]) -> set[str]:
    """Return a few test files whose tests together run every path (collecting costs time)."""
    left, files = set(by_path), set()
    while left:
        count: dict[str, set[tuple[str, ...]]] = {}
        for p in left:
            for test_id in by_path[p]:
                count.setdefault(test_id.split("::")[0], set()).add(p)
        best = max(sorted(count), key=lambda f: len(count[f]))  # ties: the first by name
        files.add(best)
        left -= count[best]
    return files


def collected(files: set[str]) -> set[str]:
    """Return the ids (parameters stripped) pytest collects from `files`."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", "", *sorted(files)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line.split("[", 1)[0] for line in proc.stdout.splitlines() if "::" in line}


def test_every_runbook_command_is_run_by_a_collected_test() -> None:
    """Each runbook command is called (not merely mentioned) by a test pytest collects."""
    paths = {command_path(c) for c in runbook_commands()}
    assert len(paths) >= 15
    by_path = {p: invoking_tests(p) for p in sorted(paths)}
    missing = [" ".join(p) for p, ids in by_path.items() if not ids]
    assert not missing, f"runbook commands no test runs: {missing}"
    ids = collected(covering_files(by_path))
    uncollected = [" ".join(p) for p, found in by_path.items() if not found & ids]
    assert not uncollected, f"runbook commands run only by tests pytest does not collect: " \
        f"{uncollected}"


def test_the_coverage_check_ignores_comments_and_docstrings() -> None:
    tree = ast.parse(
        'def test_x(cli):\n    """Runs cdc dlq purge."""\n    # cli("dlq", "purge")\n'
        '    cli("dlq", "list", "--all")\n    run([exe, "-m", "cdc", "weaver", "gen-key"])\n'
    )
    runs = string_runs(tree)
    assert invokes(("dlq", "list", "--all"), ("dlq", "list"))
    assert any(invokes(r, ("dlq", "list")) for r in runs)
    assert any(invokes(r, ("weaver", "gen-key")) for r in runs)
    assert not any(invokes(r, ("dlq", "purge")) for r in runs)


def test_first_look_commands_run_as_the_runbook_says(cli: Cli) -> None:
    """The runbook's first block, run against real servers, answers as the page says."""
    block = re.search(r"First look.*?```sh\n(.*?)```", RUNBOOK.read_text(), flags=re.S)
    assert block is not None
    commands = [line.split("#", 1)[0].split() for line in block.group(1).splitlines()]
    assert [c[:2] for c in commands] == [["cdc", "status"], ["cdc", "doctor"],
                                         ["cdc", "slot"]]
    assert cli("slot", "create").code == 0
    for argv in commands:
        res = cli(*argv[1:])
        assert res.code in (0, 1), (argv, res.err)  # 0 healthy, 1 a problem found
        assert res.out.strip() and "Traceback" not in res.err
        as_json = cli(*argv[1:], "--json")  # "Every read command takes --json"
        assert as_json.code == res.code, argv
        as_json.json()
    slot = cli("slot", "status", "--json").json()
    for key in ("active", "active_pid", "confirmed_flush_lsn", "lag_bytes", "wal_status",
                "safe_wal_size"):  # what the comment on that line promises
        assert key in slot, key


def test_weaver_gen_key_prints_a_usable_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc", "weaver", "gen-key"], capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert crypto.Cipher.from_secret(proc.stdout.strip()).key_id

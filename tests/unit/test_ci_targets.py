"""CI runs every test: the make targets `.ci/run` calls select, between them, every marker set."""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def pytest_conf() -> dict[str, Any]:
    """Return pyproject.toml's [tool.pytest.ini_options]."""
    conf: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return conf["tool"]["pytest"]["ini_options"]


def ci_targets() -> list[str]:
    """Return the make targets `.ci/run` calls, in order."""
    return re.findall(r"^make ([\w-]+)\s*$", (ROOT / ".ci/run").read_text(), re.M)


def marker_expression(target: str) -> str:
    """Return the `-m` expression of the target's pytest line (pyproject's addopts if none)."""
    body = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(),
                     re.M)
    assert body, f"no target {target} in the Makefile"
    pytest_lines = [line for line in body.group(1).splitlines() if "/pytest" in line]
    assert pytest_lines, f"make {target} runs no pytest"
    found = re.search(r"-m (?:'([^']+)'|(\w+))", pytest_lines[-1])
    if found:
        return found.group(1) or found.group(2)
    return re.search(r"-m '([^']+)'", pytest_conf()["addopts"]).group(1)  # type: ignore[union-attr]


def selects(expression: str, marks: dict[str, bool]) -> bool:
    """Evaluate a pytest marker expression (and/or/not over marker names) for one test."""
    assert re.fullmatch(r"[\w\s()]+", expression), expression
    return bool(eval(expression, {"__builtins__": {}}, marks))


def test_ci_targets_between_them_select_every_test() -> None:
    targets = ci_targets()
    assert targets[:3] == ["test", "test-slow", "test-deploy"], targets
    names = [m.split(":", 1)[0] for m in pytest_conf()["markers"]]
    expressions = {t: marker_expression(t) for t in targets}
    for values in itertools.product((False, True), repeat=len(names)):
        marks = dict(zip(names, values, strict=True))
        chosen = [t for t, e in expressions.items() if selects(e, marks)]
        assert chosen, f"no CI target runs a test marked {marks}"
    # make test leaves the slow cases to make test-slow, which runs nothing else
    assert not selects(expressions["test"], {"slow": True, "chaos": False, "deploy": False})
    assert not selects(expressions["test-slow"], {"slow": False, "chaos": True, "deploy": False})


def test_readme_names_every_command_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in ci_targets():
        assert f"make {target} " in readme, target
    assert "`.ci/run` runs " + ", then ".join(f"`make {t}`" for t in ci_targets()) in readme

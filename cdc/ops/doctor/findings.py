"""A check's result and how `cdc doctor` prints a list of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result; `fix` says exactly what to change."""

    check: str
    level: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the finding as a dict."""
        return asdict(self)


def render(findings: list[Finding]) -> str:
    """Return the findings as aligned text, each fix under its finding."""
    lines = []
    for f in findings:
        lines.append(f"{f.level:5} {f.check:24} {f.message}")
        if f.fix and f.level != OK:
            lines.append(f"{'':30} fix: {f.fix}")
    fails = sum(f.level == FAIL for f in findings)
    warns = sum(f.level == WARN for f in findings)
    verdict = "ready" if not fails else "not ready"
    lines.append(f"doctor: {verdict}: {fails} problem(s), {warns} warning(s)")
    return "\n".join(lines)

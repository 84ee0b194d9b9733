"""The systemd unit: `systemd-analyze verify` clean, security exposure <= 3.0, sysusers user."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parent.parent / "docker"
UNIT = DOCKER / "axiom-cdc-relay.service"
MAX_EXPOSURE = 3.0


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60)


def test_unit_verifies_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's `cdc`.
    cdc = Path(sys.executable).parent / "cdc"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/axiom-cdc/.venv/bin/cdc", str(cdc)))
    proc = analyze("verify", str(unit))
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr


def test_unit_security_exposure_is_at_most_3() -> None:
    proc = analyze("security", "--offline=yes", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    exposure = float(match[1])
    print(f"systemd-analyze security: {exposure}")
    assert exposure <= MAX_EXPOSURE, proc.stdout


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.fail("systemd-sysusers not found: apt-get install systemd")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(DOCKER / "axiom-cdc.sysusers")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    user = re.search(r"^User=(\S+)$", UNIT.read_text(), flags=re.M)
    assert user and re.search(rf"^{user[1]}:x:\d+:\d+:[^:]*:/nonexistent:/usr/sbin/nologin$",
                              passwd, flags=re.M), passwd

"""`make demo` runs end to end on its own throwaway servers and exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.demo"], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "consumer group synapse_group    received 400 entries" in proc.stdout
    assert "consumer group watch_cep_group  received 400 entries" in proc.stdout
    assert "core_event_outbox_published_total 400.0" in proc.stdout
    assert "demo OK" in proc.stdout

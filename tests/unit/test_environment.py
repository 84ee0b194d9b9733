"""The harness gives each test a CDC_*-free environment (tests/fix_servers.py)."""

from __future__ import annotations

import os

from cdc.settings import Settings


def test_no_cdc_setting_leaks_from_the_developers_shell() -> None:
    leaked = [k for k in os.environ if k.startswith("CDC_") and k != "CDC_TEST_BACKEND"]
    assert not leaked, leaked
    assert Settings().slot == "axiom_outbox"  # defaults, not the shell's

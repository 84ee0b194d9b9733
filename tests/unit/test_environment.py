"""The harness gives each test a CDC_*-free environment (tests/fix_servers.py)."""

from __future__ import annotations

import os

from cdc.settings import Settings


def test_no_cdc_setting_leaks_from_the_developers_shell() -> None:
    from tests.fix_servers import SHELL_CDC

    leaked = sorted(k for k in SHELL_CDC if k in os.environ)
    assert not leaked, leaked
    assert Settings().slot == "axiom_outbox"  # defaults, not the shell's

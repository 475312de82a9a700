"""Helpers of the service tests that run real server processes: environment, polling, promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    """This environment with the repository on PYTHONPATH (for ``python -m dispatch_cli.main``)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` every 50 ms until it is true (True) or ``timeout`` seconds passed (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def promtool_check(text: bytes) -> None:
    """Fail unless ``promtool check metrics`` accepts the exposition ``text``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        # CI (.ci/run) installs it and sets DISPATCH_REQUIRE_PROMTOOL, so there a missing promtool fails.
        if os.environ.get("DISPATCH_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (DISPATCH_REQUIRE_PROMTOOL is set) but not installed")
        pytest.skip("promtool not installed (Debian package 'prometheus'); `apt-get install prometheus` to run it")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

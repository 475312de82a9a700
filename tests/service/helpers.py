"""Helpers of the service tests: environment, polling and promtool for real server processes, crowded snapshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dispatch.snapshot import ServiceParams, Snapshot

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


def one_restaurant(n_orders: int, n_couriers: int) -> Snapshot:
    """Every order at one restaurant, all ready together: the most same-restaurant pairs a request can
    have, and with one courier the ``plan`` rule's slowest shape (seconds of one core for a thousand)."""
    rng = np.random.default_rng(0)
    return Snapshot(
        time=100,
        params=ServiceParams(),
        restaurant_ids=("r0",),
        restaurant_xy=rng.uniform(0, 5000, (1, 2)),
        courier_ids=tuple(f"c{i}" for i in range(n_couriers)),
        courier_xy=rng.uniform(0, 5000, (n_couriers, 2)),
        courier_free_at=np.zeros(n_couriers, np.int64),
        courier_on_time=np.zeros(n_couriers, np.int64),
        courier_off_time=np.full(n_couriers, 600, np.int64),
        order_ids=tuple(f"o{i}" for i in range(n_orders)),
        order_restaurant=np.zeros(n_orders, np.int64),
        order_xy=rng.uniform(0, 5000, (n_orders, 2)),
        order_placement=np.full(n_orders, 90, np.int64),
        order_ready=np.full(n_orders, 110, np.int64),
    )

"""Builders for tiny hand-made MDRP instances and small utilities shared by the tests."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dispatch.snapshot import JointAction, ServiceParams
from simulator import instance as instance_mod
from simulator.engine import Engine
from simulator.instance import Instance

# Easy numbers: 100 m per minute, 4-minute services (halves of 2), target 40, max 90, $10/order, $15/h.
EASY = ServiceParams(
    meters_per_minute=100.0,
    pickup_service=4,
    dropoff_service=4,
    target_ctd=40,
    max_ctd=90,
    pay_per_order=10.0,
    guaranteed_pay_per_hour=15.0,
)

ROOT = Path(__file__).resolve().parents[1]

Restaurant = tuple[str, float, float]
Order = tuple[str, float, float, int, str, int]  # id, x, y, placement, restaurant, ready
Courier = tuple[str, float, float, int, int]  # id, x, y, on, off


def make_instance(
    restaurants: list[Restaurant],
    orders: list[Order],
    couriers: list[Courier],
    params: ServiceParams = EASY,
    name: str = "tiny",
) -> Instance:
    """An Instance built directly from rows (ids, coordinates and minutes as in the text files)."""
    rids = tuple(r[0] for r in restaurants)
    rindex = {r: i for i, r in enumerate(rids)}
    return Instance(
        name=name,
        params=params,
        restaurant_ids=rids,
        restaurant_xy=np.array([[r[1], r[2]] for r in restaurants], dtype=np.float64).reshape(-1, 2),
        order_ids=tuple(o[0] for o in orders),
        order_xy=np.array([[o[1], o[2]] for o in orders], dtype=np.float64).reshape(-1, 2),
        order_placement=np.array([o[3] for o in orders], dtype=np.int64),
        order_restaurant=np.array([rindex[o[4]] for o in orders], dtype=np.int64),
        order_ready=np.array([o[5] for o in orders], dtype=np.int64),
        courier_ids=tuple(c[0] for c in couriers),
        courier_xy=np.array([[c[1], c[2]] for c in couriers], dtype=np.float64).reshape(-1, 2),
        courier_on=np.array([c[3] for c in couriers], dtype=np.int64),
        courier_off=np.array([c[4] for c in couriers], dtype=np.int64),
    )


def saved_and_loaded(inst: Instance, folder: Path) -> Instance:
    """Write ``inst`` in the MDRP text format and load it back (exercises save and load)."""
    instance_mod.save(inst, folder)
    return instance_mod.load(folder)


def advance_to(engine: Engine, t: int) -> None:
    """Step with empty joint actions until the engine's clock reaches ``t``."""
    while engine.time < t:
        engine.snapshot()
        engine.step(JointAction())
    assert engine.time == t, f"epoch grid misses t={t} (engine at {engine.time})"


def act(engine: Engine, mapping: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """Apply a joint action given as {courier id: [order ids in drop-off sequence]}."""
    snap = engine.snapshot()
    return engine.step(JointAction.from_ids(snap, mapping))


def same(a: float, b: float, tol: float = 0.01) -> bool:
    """Equal to ``tol``, NaN equal to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def dispatch(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real ``dispatch`` command line in a subprocess (this checkout first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, "-m", "dispatch_cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    """A command failed, if it did, with its own message and not a Python traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout

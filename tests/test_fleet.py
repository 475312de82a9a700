"""Fleet-time figures (simulator.fleet) on a hand-built day, and their table in ``dispatch evaluate``.

Parameters as in tests.helpers.EASY: 100 m/min, service halves of 2 minutes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dispatch_cli.main import main
from simulator.engine import Engine, SimConfig
from simulator.fleet import fleet_time
from tests.helpers import act, advance_to, make_instance


def bundle_then_single():  # type: ignore[no-untyped-def]
    return make_instance(
        [("R1", 0.0, 0.0), ("R2", 0.0, 600.0)],
        [
            ("o1", 100.0, 0.0, 0, "R1", 10),
            ("o2", 200.0, 0.0, 0, "R1", 10),
            ("o3", 0.0, 800.0, 0, "R2", 5),
        ],
        [("c1", 0.0, 300.0, 0, 120)],
    )


def test_figures_of_a_bundle_then_a_single() -> None:
    eng = Engine(bundle_then_single(), SimConfig(dispatch_interval=2))
    # t=0: c1 -> [o1, o2]. (0,300)->R1 = 300 m: 3 min driven to the restaurant, arrival 3; pickup at
    # ready 10 (lead 10). Leave 12, R1->o1 1 min (drop 15, leave 17), o1->o2 1 min (drop 20, leave 22).
    act(eng, {"c1": ["o1", "o2"]})
    advance_to(eng, 22)
    # t=22: c1 at o2's customer (200,0) -> R2 (0,600): 632.5 m -> 7 min, arrival 29; pickup 31 (lead 9).
    # R2 -> o3 200 m: 2 min.
    act(eng, {"c1": ["o3"]})
    got = fleet_time(eng.records)
    assert got["deadhead_per_bundle"] == pytest.approx((3 + 7) / 2)
    assert got["lead_per_bundle"] == pytest.approx((10 + 9) / 2)
    # Work: driving 3 + 1 + 1 + 7 + 2 = 14, two pickups 8, three drop-offs 12 -> 34 minutes, 3 delivered.
    assert got["work_per_delivered"] == pytest.approx(34 / 3)


def test_a_day_without_assignments_has_no_figures() -> None:
    eng = Engine(bundle_then_single(), SimConfig(dispatch_interval=2))
    advance_to(eng, 4)
    assert all(math.isnan(v) for v in fleet_time(eng.records).values())


def test_evaluate_prints_and_saves_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs.json"
    args = ["evaluate", "--instances", "0o50t75s1p100", "--heuristics", "nearest,reyes", "--jobs", "1"]
    assert main([*args, "--no-progress", "--fleet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "to restaurant min/bundle" in text
    runs = {r["policy"]: r for r in json.loads(out.read_text())}
    # reyes commits couriers just in time, nearest as soon as it can: its couriers are committed longer.
    assert runs["nearest"]["fleet"]["lead_per_bundle"] > runs["reyes"]["fleet"]["lead_per_bundle"]
    assert main([*args, "--no-progress"]) == 0
    assert "to restaurant" not in capsys.readouterr().out

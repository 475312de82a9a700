"""Simulated solutions pass the independent checker with identical metrics; corrupted ones fail it.

Every heuristic runs on public instances covering all ten seeds and every family dimension (o100,
o50, r50; t75, t100; s1, s2; p100, p125). Runs are cached for the session so each (instance, policy)
day is simulated once.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from simulator import solution
from simulator.checker import check_solution
from simulator.heuristics import NAMES, make
from simulator.instance import Instance, load
from simulator.run import EpisodeResult, run_episode
from simulator.solution import ASSIGNMENTS, COURIERS, ORDERS, SolutionError

INSTANCES = (
    "0o100t100s1p100",
    "1o100t75s2p125",
    "0r50t75s2p125",
    "1o50t100s1p100",
    "2o50t100s2p100",
    "2r50t100s1p125",
    "3r50t75s1p125",
    "4o50t75s2p125",
    "4r50t75s1p100",
    "5o50t75s2p100",
    "6r50t100s2p100",
    "7r50t100s1p125",
    "8o50t75s1p100",
    "9r50t100s2p125",
)


def test_instance_selection_covers_every_family() -> None:
    assert len(INSTANCES) >= 12
    assert {n[0] for n in INSTANCES} == set("0123456789")
    for part in ("o100", "o50", "r50", "t75", "t100", "s1", "s2", "p100", "p125"):
        assert any(part in n for n in INSTANCES), part
    assert set(NAMES) == {"random", "nearest", "assignment", "reyes"}


@dataclass
class Run:
    instance: Instance
    result: EpisodeResult
    folder: Path


class Runs:
    """Lazily simulate and write each (instance, policy) day once per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances: dict[str, Instance] = {}
        self.runs: dict[tuple[str, str], Run] = {}

    def get(self, name: str, policy: str) -> Run:
        key = (name, policy)
        if key not in self.runs:
            if name not in self.instances:
                self.instances[name] = load(name)
            inst = self.instances[name]
            result = run_episode(inst, make(policy), seed=0)
            folder = solution.write(result.records, self.root / name / policy)
            self.runs[key] = Run(inst, result, folder)
        return self.runs[key]


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("solutions"))


def same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 0.01


@pytest.mark.parametrize("policy", NAMES)
@pytest.mark.parametrize("name", INSTANCES)
def test_simulated_solution_is_feasible_with_equal_metrics(runs: Runs, name: str, policy: str) -> None:
    run = runs.get(name, policy)
    inst, rec = run.instance, run.result.records
    # The files hold what the engine executed.
    n_carried = int((rec.order_courier >= 0).sum())
    assert n_carried > 0
    assert len(_lines(run.folder / ORDERS)) == n_carried
    assert len(_lines(run.folder / ASSIGNMENTS)) == len(rec.assignments)
    assert len(_lines(run.folder / COURIERS)) == len(rec.moves) == len(rec.assignments) + n_carried
    report = check_solution(inst, run.folder)
    assert report.violations == []
    assert report.feasible
    sim = run.result.metrics
    assert set(sim) <= set(report.metrics)
    diffs = {k: (sim[k], report.metrics[k]) for k in sim if not same(sim[k], report.metrics[k])}
    assert diffs == {}
    assert sim["orders"] == inst.n_orders
    assert 0 < sim["delivered"] <= inst.n_orders


# ----------------------------------------------------------------------------------------------
# Mutations of one written solution
# ----------------------------------------------------------------------------------------------

BASE = ("3r50t75s1p125", "reyes")  # has two-order bundles


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines()[1:] if ln.strip()]


class Sol:
    """A copy of a written solution whose rows can be edited (row i is file line i + 2)."""

    def __init__(self, src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)
        self.dir = dst
        self.rows = {f: [ln.split() for ln in _lines(dst / f)] for f in (ASSIGNMENTS, ORDERS, COURIERS)}
        self.headers = {f: (dst / f).read_text().splitlines()[0] for f in self.rows}

    def save(self) -> Path:
        for f, rows in self.rows.items():
            (self.dir / f).write_text("\n".join([self.headers[f], *(" ".join(r) for r in rows)]) + "\n")
        return self.dir

    def order_row(self, order: str) -> list[str]:
        return next(r for r in self.rows[ORDERS] if r[0] == order)

    @staticmethod
    def line(i: int) -> int:
        return i + 2


@pytest.fixture
def base(runs: Runs) -> Run:
    run = runs.get(*BASE)
    assert check_solution(run.instance, run.folder).feasible
    return run


@pytest.fixture
def sol(base: Run, tmp_path: Path) -> Sol:
    return Sol(base.folder, tmp_path / "sol")


def violations_with(base: Run, sol: Sol, rule: str) -> list[str]:
    report = check_solution(base.instance, sol.save())
    assert not report.feasible
    return [v for v in report.violations if f"(rule {rule})" in v]


def _single(sol: Sol, pred=lambda row: True) -> int:  # type: ignore[no-untyped-def]
    return next(i for i, r in enumerate(sol.rows[ASSIGNMENTS]) if len(r) == 4 and pred(r))


def test_pickup_before_ready(base: Run, sol: Sol) -> None:
    inst = base.instance
    i = _single(sol)
    row = sol.rows[ASSIGNMENTS][i]
    order = row[3]
    ready = int(inst.order_ready[inst.order_ids.index(order)])
    row[1] = str(ready - 1)
    sol.order_row(order)[3] = str(ready - 1)
    found = violations_with(base, sol, "4")
    assert len(found) == 1
    assert f"{ASSIGNMENTS}:{Sol.line(i)}" in found[0] and order in found[0]


def test_pickup_after_off_time(base: Run, sol: Sol) -> None:
    inst = base.instance
    i = _single(sol)
    row = sol.rows[ASSIGNMENTS][i]
    courier, order = row[2], row[3]
    off = int(inst.courier_off[inst.courier_ids.index(courier)])
    row[1] = str(off + 1)
    r = sol.order_row(order)
    r[3] = str(off + 1)
    r[4] = str(max(int(r[4]), off + 5))
    found = violations_with(base, sol, "3")
    assert len(found) == 1
    assert f"{ASSIGNMENTS}:{Sol.line(i)}" in found[0] and courier in found[0]


def test_order_in_two_assignments(base: Run, sol: Sol) -> None:
    rows = sol.rows[ASSIGNMENTS]
    first = rows[0]
    other = next(r for r in rows if r[2] != first[2])
    # A second assignment (another courier) also carries the first assignment's order.
    dup = [other[0], other[1], other[2], first[3]]
    rows.append(dup)
    found = violations_with(base, sol, "1")
    assert found
    assert any(first[3] in v and f"{ASSIGNMENTS}:{Sol.line(len(rows) - 1)}" in v for v in found)


def test_order_delivered_twice(base: Run, sol: Sol) -> None:
    rows = sol.rows[ORDERS]
    rows.append(list(rows[0]))
    found = violations_with(base, sol, "1")
    assert any(rows[0][0] in v and "twice" in v for v in found)


def _pair(sol: Sol) -> int:
    return next(i for i, r in enumerate(sol.rows[ASSIGNMENTS]) if len(r) == 5)


def test_dropoffs_out_of_sequence(base: Run, sol: Sol) -> None:
    i = _pair(sol)
    row = sol.rows[ASSIGNMENTS][i]
    row[3], row[4] = row[4], row[3]
    found = violations_with(base, sol, "5")
    assert len(found) == 1
    assert f"{ASSIGNMENTS}:{Sol.line(i)}" in found[0]


def test_dropoffs_too_close(base: Run, sol: Sol) -> None:
    i = _pair(sol)
    row = sol.rows[ASSIGNMENTS][i]
    first, second = sol.order_row(row[3]), sol.order_row(row[4])
    service = base.instance.params.dropoff_service
    assert int(second[4]) - int(first[4]) >= service  # as simulated
    second[4] = str(int(first[4]) + service - 1)
    found = violations_with(base, sol, "5")
    assert len(found) == 1
    assert f"{ASSIGNMENTS}:{Sol.line(i)}" in found[0]
    assert row[3] in found[0] and row[4] in found[0]


def test_move_origin_is_not_previous_destination(base: Run, sol: Sol) -> None:
    inst = base.instance
    moves = sol.rows[COURIERS]
    # A move from a restaurant to a customer: pretend it starts at another restaurant.
    j = next(k for k, m in enumerate(moves) if m[2] in inst.restaurant_ids)
    wrong = next(r for r in inst.restaurant_ids if r != moves[j][2])
    moves[j][2] = wrong
    found = violations_with(base, sol, "6")
    assert len(found) == 1
    assert f"{COURIERS}:{Sol.line(j)}" in found[0] and wrong in found[0]


def test_first_move_must_start_on_location(base: Run, sol: Sol) -> None:
    moves = sol.rows[COURIERS]
    assert moves[0][2] == "0"
    moves[0][2] = moves[0][3]  # claims to start at the restaurant itself
    found = violations_with(base, sol, "6")
    assert any(f"{COURIERS}:{Sol.line(0)}" in v for v in found)


def test_departure_before_arrival(base: Run, sol: Sol) -> None:
    inst = base.instance
    moves = sol.rows[COURIERS]
    # Leaving a restaurant one minute before the pickup service is over.
    j = next(k for k, m in enumerate(moves) if m[2] in inst.restaurant_ids)
    moves[j][1] = str(int(moves[j][1]) - 1)
    found = violations_with(base, sol, "7")
    assert len(found) == 1
    assert f"{COURIERS}:{Sol.line(j)}" in found[0]


def test_courier_not_at_customer_for_dropoff(base: Run, sol: Sol) -> None:
    i = _single(sol)
    r = sol.order_row(sol.rows[ASSIGNMENTS][i][3])
    r[4] = str(int(r[4]) - 1)  # one minute before the courier can have arrived and started service
    found = violations_with(base, sol, "8")
    assert len(found) == 1
    assert r[0] in found[0]


def test_courier_not_at_restaurant_for_pickup(base: Run, sol: Sol) -> None:
    inst = base.instance
    moves = sol.rows[COURIERS]
    # Departing for the restaurant much later than simulated: the courier misses the pickup.
    j = next(k for k, m in enumerate(moves) if m[3] in inst.restaurant_ids)
    moves[j][1] = str(int(moves[j][1]) + 60)
    found = violations_with(base, sol, "8")
    assert any(f"{COURIERS}:{Sol.line(j)}" in v for v in found)


def test_assignment_before_placement(base: Run, sol: Sol) -> None:
    inst = base.instance
    i = _single(sol)
    row = sol.rows[ASSIGNMENTS][i]
    placed = int(inst.order_placement[inst.order_ids.index(row[3])])
    row[0] = str(placed - 1)
    found = violations_with(base, sol, "2")
    assert len(found) == 1
    assert f"{ASSIGNMENTS}:{Sol.line(i)}" in found[0] and row[3] in found[0]


def test_missing_move_is_reported(base: Run, sol: Sol) -> None:
    moves = sol.rows[COURIERS]
    courier = moves[1][0]
    del moves[1]
    found = violations_with(base, sol, "6")
    assert any(courier in v for v in found)


def test_checker_recomputes_metrics_from_the_files(base: Run, sol: Sol) -> None:
    # Move a courier's very last drop-off past the maximum click-to-door: nothing follows it, so
    # the solution stays feasible, but the checker's metrics (from the files) lose one delivery.
    inst = base.instance
    last_of: dict[str, list[str]] = {}
    for m in sol.rows[COURIERS]:
        last_of[m[0]] = m

    def on_time(order: str) -> bool:
        place = int(inst.order_placement[inst.order_ids.index(order)])
        return int(sol.order_row(order)[4]) - place <= inst.params.max_ctd

    order = next(m[3] for m in last_of.values() if m[3] in inst.order_ids and on_time(m[3]))
    r = sol.order_row(order)
    r[4] = str(int(inst.order_placement[inst.order_ids.index(order)]) + inst.params.max_ctd + 1)
    report = check_solution(inst, sol.save())
    assert report.feasible, report.violations  # delivering late is not a feasibility violation
    assert report.metrics["delivered"] == base.result.metrics["delivered"] - 1


def test_pickup_before_on_time(base: Run, sol: Sol) -> None:
    # Same files, but the instance says the courier starts after its first pickup.
    inst = base.instance
    i = _single(sol)
    row = sol.rows[ASSIGNMENTS][i]
    d = inst.courier_ids.index(row[2])
    on = inst.courier_on.copy()
    on[d] = int(row[1]) + 1
    late_start = replace(inst, courier_on=on)
    report = check_solution(late_start, sol.save())
    found = [v for v in report.violations if "(rule 3)" in v]
    assert any(f"{ASSIGNMENTS}:{Sol.line(i)}" in v and row[2] in v for v in found), report.violations


def test_bundle_from_two_restaurants(base: Run, sol: Sol) -> None:
    inst = base.instance
    rows = sol.rows[ASSIGNMENTS]
    i = _pair(sol)
    rest = inst.order_restaurant[inst.order_ids.index(rows[i][3])]
    # Add to this bundle an order of another restaurant (taken from its own single assignment).
    j = _single(sol, lambda r: inst.order_restaurant[inst.order_ids.index(r[3])] != rest)
    other = rows[j][3]
    rows[i].append(other)
    del rows[j]
    line = Sol.line(i - 1 if j < i else i)
    report = check_solution(inst, sol.save())
    assert any("spans restaurants" in v and f"{ASSIGNMENTS}:{line}" in v for v in report.violations)


def test_unknown_ids_are_reported(base: Run, sol: Sol) -> None:
    sol.rows[ASSIGNMENTS][0][2] = "courier_x"
    sol.rows[ORDERS][0][0] = "order_x"
    report = check_solution(base.instance, sol.save())
    assert any("courier_x" in v for v in report.violations)
    assert any("order_x" in v for v in report.violations)


def test_delivery_without_assignment_is_reported(base: Run, sol: Sol) -> None:
    i = _single(sol)
    order = sol.rows[ASSIGNMENTS][i][3]
    del sol.rows[ASSIGNMENTS][i]
    report = check_solution(base.instance, sol.save())
    assert any(order in v and "without an assignment" in v for v in report.violations)


def test_random_policy_is_reproducible_per_seed() -> None:
    inst = load("0o50t75s1p100")
    a = run_episode(inst, make("random"), seed=3)
    b = run_episode(inst, make("random"), seed=3)
    c = run_episode(inst, make("random"), seed=4)
    assert a.records.order_courier.tolist() == b.records.order_courier.tolist()
    assert a.records.order_dropoff.tolist() == b.records.order_dropoff.tolist()
    assert a.metrics == b.metrics or all(same(a.metrics[k], b.metrics[k]) for k in a.metrics)
    assert a.records.order_courier.tolist() != c.records.order_courier.tolist()


def test_malformed_solution_number_names_file_line_and_field(base: Run, sol: Sol) -> None:
    sol.rows[ORDERS][4][4] = "soon"
    with pytest.raises(SolutionError) as info:
        check_solution(base.instance, sol.save())
    msg = str(info.value)
    assert ORDERS in msg and f"line {Sol.line(4)}" in msg and "dropoff_time" in msg


def test_empty_solution_is_feasible_and_delivers_nothing(base: Run, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    for f in (ASSIGNMENTS, ORDERS, COURIERS):
        (folder / f).write_text((base.folder / f).read_text().splitlines()[0] + "\n")
    report = check_solution(base.instance, folder)
    assert report.feasible
    assert report.metrics["delivered"] == 0
    assert report.metrics["undelivered_pct"] == 100.0
    assert math.isnan(report.metrics["ctd_mean"])


def test_unknown_heuristic_name() -> None:
    with pytest.raises(ValueError, match="reyes"):
        make("bogus")

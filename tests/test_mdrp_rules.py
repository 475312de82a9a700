"""The MDRP rules on tiny hand-built instances; every expected number is computed by hand below.

Parameters everywhere (tests.helpers.EASY): 100 m/min, pickup and drop-off service 4 min (halves of
2 min), target click-to-door 40, maximum 90, $10 per order, $15 per guaranteed hour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dispatch.candidates import CandidateConfig, generate
from dispatch.routes import make_bundles, route_times, sequence_bundles
from dispatch.snapshot import (
    Assignment,
    InfeasibleActionError,
    JointAction,
    ServiceParams,
    travel_matrix,
    travel_minutes,
)
from simulator import metrics, solution
from simulator.checker import check_solution
from simulator.engine import Engine, RewardConfig, SimConfig
from simulator.run import outcome
from tests.helpers import EASY, act, advance_to, make_instance, saved_and_loaded

# ----------------------------------------------------------------------------------------------
# Travel time
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dx", "dy", "mpm", "minutes"),
    [
        (0.0, 250.0, 100.0, 3),  # 250 / 100 = 2.5 -> ceil 3
        (200.0, 0.0, 100.0, 2),  # exactly 2.0 -> 2 (no extra minute)
        (0.0, -200.0, 100.0, 2),  # direction does not matter
        (180.0, 240.0, 100.0, 3),  # hypot = 300 exactly -> 3
        (180.0, 241.0, 100.0, 4),  # hypot = 300.8 -> ceil 4
        (0.0, 0.0, 100.0, 0),  # same point -> 0
        (1.0, 0.0, 100.0, 1),  # any positive distance costs a whole minute
        (427.0, 0.0, 427.0, 1),  # exactly one minute at a public instance's speed
        (428.0, 0.0, 427.0, 2),
    ],
)
def test_travel_minutes_is_ceil_of_distance_over_speed(dx: float, dy: float, mpm: float, minutes: int) -> None:
    assert int(travel_minutes(dx, dy, mpm)) == minutes


def test_travel_matrix_rows_are_origins() -> None:
    a = np.array([[0.0, 0.0], [0.0, 250.0]])
    b = np.array([[200.0, 0.0], [0.0, 0.0], [0.0, -500.0]])
    # from (0,0):   200 -> 2, 0 -> 0, 500 -> 5
    # from (0,250): hypot(200,250)=320.2 -> 4, 250 -> 3, 750 -> 8
    assert travel_matrix(a, b, 100.0).tolist() == [[2, 0, 5], [4, 3, 8]]


def test_service_halves() -> None:
    assert EASY.half_pickup == 2 and EASY.half_dropoff == 2
    p = ServiceParams(pickup_service=6, dropoff_service=8)
    assert p.half_pickup == 3 and p.half_dropoff == 4


# ----------------------------------------------------------------------------------------------
# One order, then a second one from where the first ended
# ----------------------------------------------------------------------------------------------


def two_orders_instance():  # type: ignore[no-untyped-def]
    # R1 at (0,0), R2 at (300,-200). Courier c1 starts at (0,250), shift 0-120.
    # o1: customer (0,-200), placed 0, ready 10 at R1.  o2: customer (300,200), placed 16, ready 20 at R2.
    return make_instance(
        restaurants=[("R1", 0, 0), ("R2", 300, -200)],
        orders=[("o1", 0, -200, 0, "R1", 10), ("o2", 300, 200, 16, "R2", 20)],
        couriers=[("c1", 0, 250, 0, 120)],
    )


def test_single_order_timing_and_next_start(tmp_path: Path) -> None:
    inst = saved_and_loaded(two_orders_instance(), tmp_path / "inst")
    eng = Engine(inst, SimConfig(dispatch_interval=2))
    assert eng.time == 0  # the first epoch is the earliest placement
    # t=0: c1 -> o1. Travel (0,250)->(0,0) = 250 m -> 3 min, arrival 3.
    # pickup = max(ready 10, 3 + 2) = 10; leave R1 at 12; R1->o1 = 200 m -> 2 min, arrival 14;
    # drop-off = 14 + 2 = 16; free at 16 + 2 = 18 at o1's customer (0,-200).
    out = act(eng, {"c1": ["o1"]})
    rec = eng.records
    o1 = inst.order_ids.index("o1")
    assert rec.order_assigned[o1] == 0
    assert rec.order_pickup[o1] == 10
    assert rec.order_dropoff[o1] == 16
    assert eng.courier_free_at[0] == 18
    assert eng.courier_xy[0].tolist() == [0.0, -200.0]
    # Reward is paid at assignment: on time (ctd 16 <= 40) +1, ctd -0.02*16 = -0.32 -> 0.68.
    assert out.components["assigned"] == 1
    assert out.components["on_time"] == 1
    assert out.components["ctd_minutes"] == 16
    assert out.reward == pytest.approx(0.68)

    # The busy courier is shown where and when it will be free.
    snap = eng.snapshot()
    assert snap.time == 2
    assert snap.courier_free_at.tolist() == [18]
    assert snap.courier_xy.tolist() == [[0.0, -200.0]]
    assert not snap.available()[0]

    # t=18: c1 is free again (free_at 18 <= 18). o2 from o1's customer (0,-200) to R2 (300,-200):
    # 300 m -> 3 min (from c1's start (0,250) it would be hypot(300,450)=540.8 -> 6 min), arrival 21.
    # pickup = max(ready 20, 21 + 2) = 23; leave 25; R2->o2 (300,200) = 400 m -> 4, arrival 29;
    # drop-off 31; free at 33. CtD = 31 - 16 = 15.
    advance_to(eng, 18)
    act(eng, {"c1": ["o2"]})
    o2 = inst.order_ids.index("o2")
    assert rec.order_assigned[o2] == 18
    assert rec.order_pickup[o2] == 23
    assert rec.order_dropoff[o2] == 31
    assert eng.courier_free_at[0] == 33
    moves = [(m.departure, m.origin, m.destination, m.arrival) for m in rec.moves]
    assert moves == [(0, "0", "R1", 3), (12, "R1", "o1", 14), (18, "o1", "R2", 21), (25, "R2", "o2", 29)]
    # Work minutes: driving 3+2+3+4 = 12, pickup service 2*4 = 8, drop-off service 2*4 = 8 -> 28.
    assert rec.courier_work[0] == 28
    assert eng.done  # nothing left to assign

    # The solution files carry exactly these times and pass the independent checker.
    folder = solution.write(rec, tmp_path / "sol")
    assign_lines = (folder / solution.ASSIGNMENTS).read_text().split("\n")[1:3]
    assert [line.split() for line in assign_lines] == [["0", "10", "c1", "o1"], ["18", "23", "c1", "o2"]]
    order_rows = (folder / solution.ORDERS).read_text().split("\n")[1:3]
    assert [r.split() for r in order_rows] == [
        ["o1", "0", "10", "10", "16", "c1"],
        ["o2", "16", "20", "23", "31", "c1"],
    ]
    move_rows = (folder / solution.COURIERS).read_text().split("\n")[1:5]
    assert [r.split() for r in move_rows] == [
        ["c1", "0", "0", "R1"],
        ["c1", "12", "R1", "o1"],
        ["c1", "18", "o1", "R2"],
        ["c1", "25", "R2", "o2"],
    ]
    report = check_solution(inst, folder)
    assert report.violations == []
    # Utilisation 28 / 120 shift minutes.
    assert report.metrics["utilisation_mean"] == pytest.approx(28 / 120)


def test_courier_waits_on_location_then_travels_from_there() -> None:
    # Order placed at 6: epochs at 0,2,4,6; the idle courier has not moved, so the trip is from (0,250).
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o0", 0, 100, 0, "R1", 0), ("o1", 0, -200, 6, "R1", 6)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 900, 900, 0, 120)],
    )
    eng = Engine(inst, SimConfig(dispatch_interval=2))
    # t=0: c2 (far away) takes o0; c1 waits.
    act(eng, {"c2": ["o0"]})
    advance_to(eng, 6)
    snap = eng.snapshot()
    assert snap.courier_xy[snap.courier_ids.index("c1")].tolist() == [0.0, 250.0]
    act(eng, {"c1": ["o1"]})
    # arrival 6 + 3 = 9; pickup max(6, 9 + 2) = 11; drop 11 + 2 + 2 + 2 = 17.
    o1 = inst.order_ids.index("o1")
    assert eng.records.order_pickup[o1] == 11
    assert eng.records.order_dropoff[o1] == 17


# ----------------------------------------------------------------------------------------------
# Bundles
# ----------------------------------------------------------------------------------------------


def bundle_instance():  # type: ignore[no-untyped-def]
    # R1 (0,0); R2 (1000,0). c1 at (0,250) shift 0-120; c2 at (0,-250) shift 0-120.
    # o1 customer (0,-200) ready 10; o2 customer (0,-500) ready 14; o3 customer (0,-500) ready 12;
    # o4 at R2. All placed at 0.
    return make_instance(
        restaurants=[("R1", 0, 0), ("R2", 1000, 0)],
        orders=[
            ("o1", 0, -200, 0, "R1", 10),
            ("o2", 0, -500, 0, "R1", 14),
            ("o3", 0, -500, 0, "R1", 12),
            ("o4", 1000, 300, 0, "R2", 5),
        ],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, -250, 0, 120)],
    )


def test_bundle_waits_for_latest_ready_and_keeps_given_sequence(tmp_path: Path) -> None:
    inst = saved_and_loaded(bundle_instance(), tmp_path / "inst")
    eng = Engine(inst)
    # t=0: c1 -> (o2, o1), in that drop-off order (the reverse of the shorter route).
    # Arrival 0 + 3 = 3; pickup = max(ready 14 (latest of 14 and 10), 3 + 2) = 14; leave 16.
    # R1 -> o2: 500 m -> 5, arrival 21, drop 23, leave 25; o2 -> o1: 300 m -> 3, arrival 28, drop 30;
    # free at 32 at o1's customer.
    act(eng, {"c1": ["o2", "o1"]})
    rec = eng.records
    o1, o2 = inst.order_ids.index("o1"), inst.order_ids.index("o2")
    assert rec.order_pickup[o1] == rec.order_pickup[o2] == 14
    assert rec.order_dropoff[o2] == 23
    assert rec.order_dropoff[o1] == 30
    assert eng.courier_free_at[0] == 32
    assert eng.courier_xy[0].tolist() == [0.0, -200.0]
    assert rec.assignments[0].orders == (o2, o1)
    assert [m.destination for m in rec.moves] == ["R1", "o2", "o1"]
    # Work: driving 3 + 5 + 3 = 11, pickup 4, two drop-offs 8 -> 23.
    assert rec.courier_work[0] == 23
    folder = solution.write(rec, tmp_path / "sol")
    line = (folder / solution.ASSIGNMENTS).read_text().split("\n")[1].split()
    assert line == ["0", "14", "c1", "o2", "o1"]


def test_make_bundles_picks_the_cheaper_sequence_but_engine_does_not() -> None:
    # The candidate builder orders (o1, o2): offsets o1 = 2 (leave) + 2 (travel) + 2 = 6,
    # o2 = 6 + 2 + 3 + 2 = 13 -> sum 19, versus (o2, o1): 9 + 16 = 25.
    inst = bundle_instance()
    eng = Engine(inst)
    snap = eng.snapshot()
    b = make_bundles(snap, max_size=2, max_ready_gap=15)
    i1, i2 = snap.order_index("o1"), snap.order_index("o2")
    pairs = [b.members(k) for k in range(b.n) if set(b.members(k)) == {i1, i2}]
    assert pairs == [(i1, i2)]
    k = next(kk for kk in range(b.n) if b.members(kk) == (i1, i2))
    assert b.dropoff_offset[k].tolist() == [6, 13]
    assert b.free_offset[k] == 15
    assert b.ready[k] == 14
    # A bundle across restaurants is never built, and (o1, o4) does not appear.
    i4 = snap.order_index("o4")
    assert all(not {i1, i4} <= set(b.members(kk)) for kk in range(b.n))
    # The given sequence is kept without reorder.
    fixed = sequence_bundles(snap, [(i2, i1)])
    assert fixed.members(0) == (i2, i1)
    assert fixed.dropoff_offset[0].tolist() == [9, 16]


def test_consecutive_dropoffs_at_least_one_service_apart() -> None:
    # o2 and o3 share a customer location: travel between them is 0, yet the second drop-off is
    # half a service after leaving the first: 23 -> leave 25 -> arrive 25 -> drop 27 (4 = service).
    inst = bundle_instance()
    eng = Engine(inst)
    act(eng, {"c1": ["o2", "o3"]})
    rec = eng.records
    o2, o3 = inst.order_ids.index("o2"), inst.order_ids.index("o3")
    # pickup = max(14, 12, 3 + 2) = 14; leave 16; R1 -> o2 500 m -> 5: drop 23.
    assert rec.order_dropoff[o2] == 23
    assert rec.order_dropoff[o3] == 27
    assert rec.order_dropoff[o3] - rec.order_dropoff[o2] >= inst.params.dropoff_service


def test_route_times_of_a_pair_match_the_engine() -> None:
    inst = bundle_instance()
    eng = Engine(inst)
    snap = eng.snapshot()
    i1, i2 = snap.order_index("o1"), snap.order_index("o2")
    b = sequence_bundles(snap, [(i2, i1), (i1,)])
    rt = route_times(snap, np.array([0, 1]), b)
    # c1 (0,250): travel 3, pickup max(14, 5) = 14 for the pair; max(10, 5) = 10 for o1 alone.
    # c2 (0,-250): travel 3 as well.
    assert rt.travel_to_restaurant.tolist() == [[3, 3], [3, 3]]
    assert rt.pickup.tolist() == [[14, 10], [14, 10]]
    # Pair: drops 23 and 30 -> ctd 23 and 30; last 30; free 32. o1 alone: drop 10+2+2+2 = 16, free 18.
    assert rt.last_dropoff.tolist() == [[30, 16], [30, 16]]
    assert rt.max_ctd.tolist() == [[30, 16], [30, 16]]
    assert rt.sum_ctd.tolist() == [[53, 16], [53, 16]]
    assert rt.free_at.tolist() == [[32, 18], [32, 18]]
    assert rt.feasible.all()


# ----------------------------------------------------------------------------------------------
# Rejected joint actions
# ----------------------------------------------------------------------------------------------


def test_no_pickup_after_off_time(tmp_path: Path) -> None:
    # c1 at (0,250), shift 0-12; o1 ready 13 -> pickup max(13, 3 + 2) = 13 > off-time 12.
    inst = saved_and_loaded(
        make_instance(
            restaurants=[("R1", 0, 0)],
            orders=[("o1", 0, -200, 0, "R1", 13)],
            couriers=[("c1", 0, 250, 0, 12)],
        ),
        tmp_path / "inst",
    )
    eng = Engine(inst)
    snap = eng.snapshot()
    with pytest.raises(InfeasibleActionError, match=r"\bc1\b"):
        eng.step(JointAction.from_ids(snap, {"c1": ["o1"]}))
    # Nothing changed.
    assert eng.time == 0
    assert eng.records.assignments == [] and eng.records.moves == []
    assert eng.records.order_courier.tolist() == [-1]
    assert eng.courier_free_at.tolist() == [0]
    # The candidate generator marks the pair infeasible and offers nothing.
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=2))
    assert cands.agents.tolist() == [0]
    assert not cands.times.feasible.any()
    assert not cands.mask.any()
    assert cands.times.pickup.tolist() == [[13]]


def test_pickup_exactly_at_off_time_is_allowed() -> None:
    # Same as above with off-time 13: pickup 13 <= 13 is allowed; the drop-off (19) may follow it.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, -200, 0, "R1", 13)],
        couriers=[("c1", 0, 250, 0, 13)],
    )
    eng = Engine(inst)
    snap = eng.snapshot()
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=1))
    assert cands.mask.tolist() == [[True]]
    eng.step(JointAction.from_ids(snap, {"c1": ["o1"]}))
    assert eng.records.order_pickup.tolist() == [13]
    assert eng.records.order_dropoff.tolist() == [19]  # leave 13 + 2, travel 2 -> 17, + 2 service


def test_busy_courier_is_rejected_by_name() -> None:
    inst = two_orders_instance()
    eng = Engine(inst)
    act(eng, {"c1": ["o1"]})  # busy until 18 (see test_single_order_timing_and_next_start)
    advance_to(eng, 16)  # o2 is placed at 16
    snap = eng.snapshot()
    action = JointAction.from_ids(snap, {"c1": ["o2"]})
    with pytest.raises(InfeasibleActionError, match=r"courier c1 is not available"):
        action.check(snap)
    with pytest.raises(InfeasibleActionError, match=r"\bc1\b"):
        eng.step(action)
    assert eng.time == 16
    assert eng.records.order_courier[inst.order_ids.index("o2")] == -1


def test_courier_before_on_time_is_rejected() -> None:
    # c2 starts at 10 but is shown from t=0 (lookahead 10); it cannot be assigned before 10.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, -200, 0, "R1", 10)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, 250, 10, 120)],
    )
    eng = Engine(inst)
    snap = eng.snapshot()
    assert snap.courier_ids == ("c1", "c2")
    assert snap.available().tolist() == [True, False]
    with pytest.raises(InfeasibleActionError, match=r"courier c2"):
        eng.step(JointAction.from_ids(snap, {"c2": ["o1"]}))


def test_order_to_two_couriers_is_rejected_naming_the_order() -> None:
    eng = Engine(bundle_instance())
    snap = eng.snapshot()
    action = JointAction.from_ids(snap, {"c1": ["o1"], "c2": ["o2", "o1"]})
    with pytest.raises(InfeasibleActionError, match=r"order o1 is given to two couriers"):
        eng.step(action)
    assert eng.records.assignments == []
    assert eng.records.order_courier.tolist() == [-1, -1, -1, -1]


def test_same_courier_twice_is_rejected() -> None:
    eng = Engine(bundle_instance())
    snap = eng.snapshot()
    c1, o1, o2 = 0, snap.order_index("o1"), snap.order_index("o2")
    action = JointAction((Assignment(c1, (o1,)), Assignment(c1, (o2,))))
    with pytest.raises(InfeasibleActionError, match=r"courier c1"):
        eng.step(action)


def test_unknown_order_id_is_rejected_naming_it() -> None:
    eng = Engine(bundle_instance())
    snap = eng.snapshot()
    with pytest.raises(InfeasibleActionError, match=r"o99"):
        JointAction.from_ids(snap, {"c1": ["o1", "o99"]})
    with pytest.raises(InfeasibleActionError, match=r"c9"):
        JointAction.from_ids(snap, {"c9": ["o1"]})


def test_already_assigned_order_is_no_longer_open() -> None:
    eng = Engine(bundle_instance())
    act(eng, {"c1": ["o1"]})
    snap = eng.snapshot()
    assert "o1" not in snap.order_ids
    with pytest.raises(InfeasibleActionError, match=r"o1"):
        JointAction.from_ids(snap, {"c2": ["o1"]})


def test_bundle_from_two_restaurants_is_rejected() -> None:
    eng = Engine(bundle_instance())
    snap = eng.snapshot()
    action = JointAction.from_ids(snap, {"c1": ["o1", "o4"]})
    with pytest.raises(InfeasibleActionError, match=r"courier c1 .*several restaurants"):
        eng.step(action)
    assert eng.records.assignments == []


def test_empty_bundle_is_rejected() -> None:
    eng = Engine(bundle_instance())
    eng.snapshot()
    with pytest.raises(InfeasibleActionError, match=r"c1"):
        eng.step(JointAction((Assignment(0, ()),)))


# ----------------------------------------------------------------------------------------------
# Expiry, late deliveries, pay
# ----------------------------------------------------------------------------------------------


def test_unassigned_order_expires_after_max_click_to_door(tmp_path: Path) -> None:
    # o1 placed at 0; the only courier starts at 200, so nobody can take it. Interval 1.
    inst = saved_and_loaded(
        make_instance(
            restaurants=[("R1", 0, 0)],
            orders=[("o1", 0, -200, 0, "R1", 5)],
            couriers=[("c1", 0, 250, 200, 300)],
        ),
        tmp_path / "inst",
    )
    eng = Engine(inst, SimConfig(dispatch_interval=1))
    expired_at = []
    while not eng.done:
        snap = eng.snapshot()
        if eng.time <= 90:
            # Still open (assignable) up to and including placement + max_ctd = 90.
            assert snap.order_ids == ("o1",), eng.time
        out = eng.step(JointAction())
        if out.components["expired"]:
            expired_at.append(eng.time)
            # Charged once, -3 per expired order.
            assert out.components["expired"] == 1
            assert out.reward == pytest.approx(-3.0)
    # After the epoch at 90 the clock is 91 > 90: expired then, not before.
    assert expired_at == [91]
    assert eng.expired.tolist() == [True]
    m = metrics.compute(inst, outcome(eng.records))
    assert m["delivered"] == 0
    assert m["undelivered_pct"] == pytest.approx(100.0)
    assert m["on_time_pct"] == 0.0


def test_order_can_still_be_assigned_at_placement_plus_max() -> None:
    # Courier c1 starts at 90 next to R1; o1 placed at 0, ready 0: at t=90 it is still open.
    # Pickup max(0, 90 + 3 + 2) = 95, drop 95 + 2 + 2 + 2 = 101 -> ctd 101 > 90: carried but late.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, -200, 0, "R1", 0)],
        couriers=[("c1", 0, 250, 90, 300)],
    )
    eng = Engine(inst, SimConfig(dispatch_interval=2))
    advance_to(eng, 90)
    out = act(eng, {"c1": ["o1"]})
    assert eng.records.order_dropoff.tolist() == [101]
    assert out.components["late_undelivered"] == 1
    assert out.components["on_time"] == 0
    assert out.components["ctd_minutes"] == 0  # a late order is charged as undelivered instead
    assert out.reward == pytest.approx(-3.0)
    m = metrics.compute(inst, outcome(eng.records))
    assert m["delivered"] == 0
    assert m["undelivered_pct"] == pytest.approx(100.0)


def test_late_delivery_counts_undelivered_and_unpaid(tmp_path: Path) -> None:
    # o1 ready 88 -> pickup 88, drop 88 + 2 + 2 + 2 = 94 > 90: carried, but undelivered.
    # o2 ready 10 -> pickup max(10, 5) = 10, drop 16: delivered.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, -200, 0, "R1", 88), ("o2", 0, -200, 0, "R1", 10)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, 250, 0, 120)],
    )
    eng = Engine(inst)
    out = act(eng, {"c1": ["o1"], "c2": ["o2"]})
    assert eng.records.order_dropoff.tolist() == [94, 16]
    assert out.components["late_undelivered"] == 1
    assert out.components["on_time"] == 1
    m = metrics.compute(inst, outcome(eng.records))
    assert m["delivered"] == 1
    assert m["undelivered_pct"] == pytest.approx(50.0)
    assert m["on_time_pct"] == pytest.approx(50.0)
    # Order earnings count delivered orders only: c1 0, c2 $10; each guaranteed 15 * 2 h = 30.
    assert m["order_earnings_max"] == 10.0
    assert m["total_pay"] == pytest.approx(60.0)
    # The checker agrees from the files alone.
    rep = check_solution(inst, solution.write(eng.records, tmp_path / "sol"))
    assert rep.feasible, rep.violations
    assert rep.metrics["delivered"] == 1
    assert rep.metrics["undelivered_pct"] == pytest.approx(50.0)


def test_pay_is_the_max_of_order_pay_and_guarantee() -> None:
    # c1: shift 0-120 (2 h, guarantee 15 * 2 = 30), delivers 1 order -> earnings 10 -> pay 30.
    # c2: shift 0-60 (1 h, guarantee 15), delivers 2 orders (a bundle) -> earnings 20 -> pay 20.
    # c3: shift 0-60, delivers nothing -> pay 15.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, -200, 0, "R1", 10), ("o2", 0, -300, 0, "R1", 10), ("o3", 0, -300, 0, "R1", 10)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, 250, 0, 60), ("c3", 0, 250, 0, 60)],
    )
    eng = Engine(inst)
    act(eng, {"c1": ["o1"], "c2": ["o2", "o3"]})
    assert eng.done
    m = metrics.compute(inst, outcome(eng.records))
    assert m["delivered"] == 3
    assert m["order_earnings_min"] == 0.0 and m["order_earnings_max"] == 20.0
    assert m["order_earnings_mean"] == pytest.approx(10.0)  # (10 + 20 + 0) / 3
    assert m["pay_min"] == 15.0 and m["pay_max"] == 30.0
    assert m["total_pay"] == pytest.approx(65.0)  # 30 + 20 + 15
    assert m["cost_per_order"] == pytest.approx(65.0 / 3)
    # Paid the guarantee: c1 (30 > 10) and c3 (15 > 0); not c2 (20 > 15) -> 2/3.
    assert m["guaranteed_share"] == pytest.approx(2 / 3)
    # Orders per hour: c1 1/2, c2 2/1, c3 0 -> mean 2.5 / 3.
    assert m["orders_per_hour_mean"] == pytest.approx(2.5 / 3)
    # Bundles: sizes 1 and 2.
    assert m["bundle_size_mean"] == pytest.approx(1.5)


def test_dispatch_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="dispatch_interval"):
        Engine(bundle_instance(), SimConfig(dispatch_interval=0))


def test_a_rejected_joint_action_executes_none_of_its_assignments() -> None:
    # c1 can serve o1 (pickup 10 <= 120), c2's shift ends at 12 and o2 is ready at 14: pickup 14 > 12.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, -200, 0, "R1", 10), ("o2", 0, -200, 0, "R1", 14)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, 250, 0, 12)],
    )
    eng = Engine(inst)
    snap = eng.snapshot()
    with pytest.raises(InfeasibleActionError, match=r"\bc2\b"):
        eng.step(JointAction.from_ids(snap, {"c1": ["o1"], "c2": ["o2"]}))
    assert eng.records.assignments == [] and eng.records.moves == []
    assert eng.records.order_courier.tolist() == [-1, -1]
    assert eng.courier_free_at.tolist() == [0, 0]
    assert eng.time == 0
    # The valid half alone goes through.
    eng.step(JointAction.from_ids(eng.snapshot(), {"c1": ["o1"]}))
    assert eng.records.order_pickup.tolist() == [10, -1]


def _rewards(timing: str, assign_at: int) -> list[float]:
    """Per-epoch rewards of a day where o1 (placed 0) is left open until ``assign_at``, then assigned."""
    eng = Engine(two_orders_instance(), SimConfig(dispatch_interval=2), RewardConfig(timing=timing))
    out = []
    while eng.time < assign_at:
        eng.snapshot()
        out.append(eng.step(JointAction()).reward)
    out.append(act(eng, {"c1": ["o1"]}).reward)
    return out


def test_accrued_reward_charges_waiting_as_it_happens_and_the_same_in_total() -> None:
    paid_late = _rewards("assignment", 6)
    accrued = _rewards("accrued", 6)
    # Epochs 0, 2, 4: o1 waits 2 minutes each (o2 is not placed before 16): -0.02 * 2 each.
    assert paid_late[:3] == [0.0, 0.0, 0.0]
    assert accrued[:3] == pytest.approx([-0.04, -0.04, -0.04])
    # At 6 the route's part is paid; in total a delivered order costs its click-to-door once.
    assert accrued[3] == pytest.approx(paid_late[3] + 0.12)
    assert sum(accrued) == pytest.approx(sum(paid_late))


def test_accrued_reward_charges_an_expired_order_its_full_wait() -> None:
    inst = make_instance(
        restaurants=[("R1", 0, 0)], orders=[("o1", 0, -200, 0, "R1", 5)], couriers=[("c1", 0, 250, 200, 300)]
    )
    eng = Engine(inst, SimConfig(dispatch_interval=2), RewardConfig(timing="accrued"))
    total = 0.0
    while not eng.done:
        eng.snapshot()
        total += eng.step(JointAction()).reward
    # 90 minutes of click-to-door (50 past the 40-minute target), then the expiry charge.
    assert total == pytest.approx(-0.02 * 90 - 0.05 * 50 - 3.0)


def _day(timing: str, plan: dict[int, dict[str, list[str]]]) -> list[tuple[float, dict[str, float]]]:
    """Per-epoch (reward, components) of a two_orders_instance day acting ``plan[epoch time]``, else waiting."""
    eng = Engine(two_orders_instance(), SimConfig(dispatch_interval=2), RewardConfig(timing=timing))
    out = []
    while not eng.done:
        snap = eng.snapshot()
        step = eng.step(JointAction.from_ids(snap, plan.get(snap.time, {})))
        out.append((step.reward, step.components))
    return out


@pytest.mark.parametrize("plan", [{6: {"c1": ["o1"]}}, {6: {"c1": ["o1"]}, 30: {"c1": ["o2"]}}, {}])
def test_placement_reward_charges_at_first_sight_refunds_on_service_same_total(
    plan: dict[int, dict[str, list[str]]],
) -> None:
    paid_late = _day("assignment", plan)
    upfront = _day("placement", plan)
    assert len(paid_late) == len(upfront)
    # o1 is placed at 0 and o2 at 16: first shown at epochs 0 and 8, each charged there once.
    assert [i for i, (_, c) in enumerate(upfront) if c["placed"]] == [0, 8]
    assert sum(c["placed"] for _, c in upfront) == 2
    served = {t // 2 for t in plan}
    expired = {i for i, (_, c) in enumerate(paid_late) if c["expired"]}
    assert len(served) + len(expired) == 2  # every order either served in time or expired
    for i, ((a, _), (b, _)) in enumerate(zip(paid_late, upfront, strict=True)):
        charge = -3.0 * (i in (0, 8))
        refund = 3.0 * (i in served)
        no_expiry_charge = 3.0 * (i in expired)  # paid upfront instead
        assert b == pytest.approx(a + charge + refund + no_expiry_charge), f"epoch {i}"
    assert sum(b for b, _ in upfront) == pytest.approx(sum(a for a, _ in paid_late))


def test_unknown_reward_timing_is_refused() -> None:
    with pytest.raises(ValueError, match="timing"):
        RewardConfig(timing="later")


def test_accrued_reward_charges_a_late_delivery_like_an_expiry() -> None:
    # As in test_order_can_still_be_assigned_at_placement_plus_max: o1 carried at 90, delivered at 101.
    inst = make_instance(
        restaurants=[("R1", 0, 0)], orders=[("o1", 0, -200, 0, "R1", 0)], couriers=[("c1", 0, 250, 90, 300)]
    )
    eng = Engine(inst, SimConfig(dispatch_interval=2), RewardConfig(timing="accrued"))
    total = 0.0
    while eng.time < 90:
        eng.snapshot()
        total += eng.step(JointAction()).reward
    total += act(eng, {"c1": ["o1"]}).reward
    assert eng.records.order_dropoff.tolist() == [101]
    # The same as an order left to expire: 90 minutes (50 past the target), then the undelivered charge.
    assert total == pytest.approx(-0.02 * 90 - 0.05 * 50 - 3.0)

"""``reyes`` on hand-built days: orders that cannot be saved never hold back the ones that can."""

from __future__ import annotations

from dataclasses import replace

from simulator.engine import Engine
from simulator.heuristics.reyes import ReyesPolicy
from simulator.run import run_episode
from tests.helpers import make_instance


def first_epoch(inst) -> dict[str, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """What reyes commits at minute 0, as {courier id: order ids}."""
    snap = Engine(inst).snapshot()
    return ReyesPolicy().decide(snap).action.to_ids(snap)


def test_a_route_no_courier_can_serve_in_time_is_split_into_singles() -> None:
    # One courier at R1, two orders ready at once, customers 4 km east and 4 km west (40 min each).
    # Alone: pickup 2, drop 2 + 2 + 40 + 2 = 46 <= 90. Together the second drop is 130 > 90, yet the
    # bundling (target size |U| / |D| = 2, cost-driven) puts both in one route.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("east", 4000, 0, 0, "R1", 0), ("west", -4000, 0, 0, "R1", 0)],
        couriers=[("c1", 0, 0, 0, 300)],
    )
    committed = first_epoch(inst)
    assert list(committed) == ["c1"] and len(committed["c1"]) == 1
    result = run_episode(inst, ReyesPolicy())
    assert result.metrics["delivered"] == 1  # the other one is out of reach once c1 is 4 km away


def test_orders_past_saving_do_not_count_towards_the_bundle_size() -> None:
    # At minute 60: "late1" and "late2" were placed 60 min ago 8 km out: even picked up now, 2 + 2 + 80 + 2 = 86 min
    # after now is 146 min after placement > 90, so no courier can save them. Counted in the pool they
    # would double the target bundle size (4 orders / 2 couriers) and pair "a" with "b" on one
    # courier; without them each of the two couriers takes one order.
    inst = make_instance(
        restaurants=[("R1", 0, 0), ("R2", 0, 500)],
        orders=[
            ("late1", 8000, 0, 0, "R1", 0),
            ("late2", 8000, 100, 0, "R1", 0),
            ("a", 300, 500, 0, "R2", 60),
            ("b", -300, 500, 0, "R2", 60),
        ],
        couriers=[("c1", 0, 500, 0, 300), ("c2", 0, 500, 0, 300)],
    )
    snap = replace(Engine(inst).snapshot(), time=60)  # every order open, both couriers idle
    committed = ReyesPolicy().decide(snap).action.to_ids(snap)
    assert sorted(committed.values()) == [("a",), ("b",)]

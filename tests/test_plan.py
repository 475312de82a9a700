"""The ``plan`` rule: reyes' plan decides who goes and what comes first; the model ranks pairs within that."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.serve import synthetic_snapshot
from dispatch import assemble, kernels
from dispatch.candidates import CandidateConfig
from dispatch.linear_model import write_linear_model
from dispatch.onnx_policy import OnnxPolicy
from dispatch.plan import (
    PLAN_RULE,
    Plan,
    PlanParams,
    blended_scores,
    block_travel,
    bundle_pool,
    candidates_for,
    execute,
    make_plan,
    plan_scores,
)
from dispatch.snapshot import Snapshot, travel_matrix
from simulator.engine import Engine
from simulator.heuristics.reyes import ReyesPolicy
from simulator.instance import load
from simulator.run import run_episode
from tests.helpers import make_instance


def _slot_of(plan: Plan, order_id: str, snap: Snapshot) -> int:
    """The slot of the single holding ``order_id`` in the first agent's list."""
    o = snap.order_ids.index(order_id)
    for slot in range(plan.cands.k):
        if plan.cands.mask[0, slot] and plan.cands.bundles.members(int(plan.cands.bundle[0, slot])) == (o,):
            return slot
    raise AssertionError(f"{order_id} is not in the list")


def _preferring(plan: Plan, slot: int) -> np.ndarray:
    """Model logits (agents, K+1) that put nearly all of the first agent's probability on ``slot``."""
    logits = np.full((plan.cands.n_agents, plan.cands.k + 1), -50.0)
    logits[0, slot] = 0.0
    return logits


def _sent(plan: Plan, scores: np.ndarray, snap: Snapshot) -> dict[str, tuple[str, ...]]:
    return execute(plan, scores)[0].action.to_ids(snap)


def test_the_models_preference_decides_between_pairs_of_one_priority_group() -> None:
    # One idle courier at R1; one order at R1 and one at R2, 5 minutes away, both ready now and both in
    # group II (no pickup at the ready time). The plan's value favours the nearer one; a model that wants
    # the other gets it.
    inst = make_instance(
        restaurants=[("R1", 0, 0), ("R2", 500, 0)],
        orders=[("near", 1000, 0, 0, "R1", 0), ("far", 1500, 0, 0, "R2", 0)],
        couriers=[("c1", 0, 0, 0, 300)],
    )
    snap = Engine(inst).snapshot()
    plan = make_plan(snap, k=16)
    assert plan is not None
    near, far = _slot_of(plan, "near", snap), _slot_of(plan, "far", snap)
    assert plan.group[0, near] == plan.group[0, far]
    assert _sent(plan, plan_scores(plan), snap) == {"c1": ("near",)}
    assert _sent(plan, blended_scores(plan, _preferring(plan, far)), snap) == {"c1": ("far",)}
    assert _sent(plan, blended_scores(plan, _preferring(plan, near)), snap) == {"c1": ("near",)}


def test_an_order_about_to_expire_comes_first_whatever_the_model_prefers() -> None:
    # At minute 60: "old", ready since 0 with its customer 20 minutes out, is lost unless served now (group
    # 0); "fresh", ready at 60 with its customer next door, can still be delivered well within the limit.
    inst = make_instance(
        restaurants=[("R1", 0, 0), ("R2", 100, 0)],
        orders=[("old", 2000, 0, 0, "R1", 0), ("fresh", 100, 0, 0, "R2", 60)],
        couriers=[("c1", 0, 0, 0, 300)],
    )
    snap = replace(Engine(inst).snapshot(), time=60)
    plan = make_plan(snap, k=16)
    assert plan is not None
    old, fresh = _slot_of(plan, "old", snap), _slot_of(plan, "fresh", snap)
    assert plan.group[0, old] == 0 < plan.group[0, fresh]
    assert _sent(plan, blended_scores(plan, _preferring(plan, fresh)), snap) == {"c1": ("old",)}


def test_a_courier_that_would_arrive_early_is_not_committed_whatever_the_model_prefers() -> None:
    # The only order is ready at minute 30 and the courier is 3 minutes away: leaving now would be early.
    inst = make_instance(
        restaurants=[("R1", 300, 0)],
        orders=[("later", 1000, 0, 0, "R1", 30)],
        couriers=[("c1", 0, 0, 0, 300)],
    )
    snap = replace(Engine(inst).snapshot(), time=20)
    plan = make_plan(snap, k=16)
    assert plan is not None
    out, held = execute(plan, blended_scores(plan, _preferring(plan, _slot_of(plan, "later", snap))))
    assert out.action.to_ids(snap) == {} and held == () and (out.choice == assemble.WAIT).all()


def test_the_plan_rule_is_not_a_rule_of_the_generic_assembly() -> None:
    snap = Engine(load("0o50t75s1p100")).snapshot()
    from dispatch.candidates import generate

    cands = generate(snap)
    with pytest.raises(ValueError, match="plan's candidates"):
        assemble.assemble(cands, np.zeros((cands.n_agents, cands.k + 1)), "plan")


def test_a_plan_model_runs_a_day_feasibly_and_differs_from_reyes(tmp_path: Path) -> None:
    model = write_linear_model(tmp_path / "plan.onnx", name="plan", conflict_rule="plan")
    assert json.loads(model.with_suffix(".json").read_text())["conflict_rule"] == "plan"
    inst = load("4o50t100s1p100")
    learned = run_episode(inst, OnnxPolicy(model))  # every joint action is checked by the engine
    reyes = run_episode(inst, ReyesPolicy())
    assert learned.metrics["delivered"] > 0.9 * reyes.metrics["delivered"]
    assert learned.metrics["ctd_mean"] != reyes.metrics["ctd_mean"]  # the model's scores reached the decisions


def _bundle_reference(legs: list[list[int]], ready: list[int], z: int, gap: int, service: int, beta: float) -> list:
    """The Python formulation of step 3 that the compiled ``bundle_pools`` replaced (stops 1..n)."""

    def cost(seq: list[int]) -> float:
        prev, clock, delay = 0, 0, 0
        for stop in seq:
            clock += legs[prev][stop] + service
            delay += clock
            prev = stop
        return clock + beta * delay

    n = len(ready) - 1
    routes: list[list[int]] = [[] for _ in range(max(1, math.ceil(n / z)))]

    def insert(o: int) -> None:
        best = (math.inf, -1, -1)
        for ri, route in enumerate(routes):
            if route:
                times = [ready[s] for s in route] + [ready[o]]
                if max(times) - min(times) > gap:
                    continue
            old = cost(route) if route else 0.0
            for pos in range(len(route) + 1):
                seq = [*route[:pos], o, *route[pos:]]
                new = cost(seq)
                if len(route) >= z and route and new / len(seq) >= old / len(route):
                    continue
                if new - old < best[0]:
                    best = (new - old, ri, pos)
        if best[1] < 0:
            routes.append([o])
        else:
            routes[best[1]].insert(best[2], o)

    by_ready = sorted(range(1, n + 1), key=lambda stop: ready[stop])
    for o in by_ready:
        insert(o)
    for o in by_ready:
        for route in routes:
            if o in route:
                route.remove(o)
                break
        insert(o)
    return [r for r in routes if r]


@pytest.mark.parametrize("seed", range(40))
def test_compiled_bundling_matches_the_python_reference(seed: int) -> None:
    """Pools of 1-40 orders, coarse ready times (ties), tight and loose gaps, every Z: the same routes."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 41))
    # Every third pool on a coarse grid: equal legs, so equal costs and per-stop costs test the tie rules.
    xy = rng.uniform(0, 6000, (n + 1, 2)) if seed % 3 else 2000.0 * rng.integers(0, 3, (n + 1, 2))
    legs = np.ceil(np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) / 320).astype(np.int64)
    ready = (
        np.concatenate([[0], 5 * rng.integers(0, 8, n)]) if seed % 2 else np.concatenate([[0], rng.integers(0, 60, n)])
    )
    z = int(rng.integers(1, 6))
    gap = int(rng.choice([0, 10, 40, 1000]))
    service, beta = int(rng.integers(0, 5)), float(rng.choice([0.0, 0.5, 1.3]))
    want = _bundle_reference(legs.tolist(), ready.tolist(), z, gap, service, beta)
    by_ready = np.argsort(ready[1:], kind="stable") + 1
    n1 = n + 1
    got, pool = kernels.bundle_pools(legs.ravel(), [0, n1 * n1], ready, [0, n1], by_ready, z, gap, service, beta)
    assert np.all(pool == 0)
    assert [[int(s) for s in row if s > 0] for row in got] == want
    assert all(np.all(row[len([s for s in row if s > 0]) :] == -1) for row in got)  # padding only at the end


def _pool_reference(snap: Snapshot, pool: np.ndarray, z: int, params: PlanParams) -> list[tuple[int, ...]]:
    """Step 3 as it was written first: restaurant by restaurant, each with its own travel matrix."""
    by_rest: dict[int, list[int]] = {}
    for o in pool:
        by_rest.setdefault(int(snap.order_restaurant[o]), []).append(int(o))
    groups: list[tuple[int, ...]] = []
    for orders in by_rest.values():
        stops = np.concatenate([snap.restaurant_xy[snap.order_restaurant[orders[:1]]], snap.order_xy[orders]])
        legs = travel_matrix(stops, stops, snap.params.meters_per_minute).tolist()
        ready = [0, *(int(r) for r in snap.order_ready[orders])]
        routes = _bundle_reference(legs, ready, z, params.max_ready_gap, snap.params.dropoff_service, params.beta)
        groups.extend(tuple(orders[s - 1] for s in r) for r in routes)
    return groups


@pytest.mark.parametrize("seed", range(12))
def test_all_restaurants_bundled_in_one_call_match_the_reference(seed: int) -> None:
    """Many restaurants, pools in shuffled order, shared restaurants and single-order pools: the same bundles."""
    rng = np.random.default_rng(seed)
    snap = synthetic_snapshot(int(rng.integers(2, 80)), int(rng.integers(1, 400)), seed)
    if seed % 3 == 0:  # few restaurants: long pools; coarse ready times: ties
        rest = rng.integers(0, 3, snap.n_orders)
        snap = replace(snap, order_restaurant=rest, order_ready=snap.order_ready - snap.order_ready % 5)
    pool = rng.permutation(snap.n_orders)[: int(rng.integers(1, snap.n_orders + 1))]  # any order, not only sorted
    params = PlanParams(beta=float(rng.choice([0.0, 0.5, 2.0])), max_ready_gap=int(rng.choice([5, 40])))
    z = int(rng.integers(1, 5))
    rows = bundle_pool(snap, pool, z, params)
    filled = rows >= 0
    # One route per row, padded with -1 at its end only, to the longest route's width.
    assert filled[:, 0].all() and not (~filled[:, :-1] & filled[:, 1:]).any() and filled[:, -1].any()
    assert [tuple(int(o) for o in row[row >= 0]) for row in rows] == _pool_reference(snap, pool, z, params)


def test_block_travel_gives_each_blocks_travel_matrix() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 9000, (40, 2))
    stops_start = np.array([0, 1, 5, 6, 23, 40])
    legs, legs_start = block_travel(xy, stops_start, 321.0)
    for r in range(stops_start.size - 1):
        pts = xy[stops_start[r] : stops_start[r + 1]]
        block = legs[legs_start[r] : legs_start[r + 1]].reshape(len(pts), len(pts))
        np.testing.assert_array_equal(block, travel_matrix(pts, pts, 321.0))


def test_batched_bundling_refuses_inconsistent_layouts() -> None:
    """Bad layouts are refused by name before the unchecked compiled loops could read past an array."""
    legs, legs_start, ready = np.zeros(4, dtype=np.int64), np.array([0, 4]), np.zeros(2, dtype=np.int64)
    stops, by_ready = np.array([0, 2]), np.array([1])
    kernels.bundle_pools(legs, legs_start, ready, stops, by_ready, 1, 0, 0, 0.5)  # the valid layout runs
    bad = {
        "stops_start": (legs, legs_start, ready, np.array([0, 0, 2]), by_ready, 1),
        "legs_start": (legs, np.array([0, 3]), ready, stops, by_ready, 1),
        "do not match": (np.zeros(3, dtype=np.int64), legs_start, ready, stops, by_ready, 1),
        "one stop per order": (legs, legs_start, ready, stops, np.array([1, 1]), 1),
        "1..n": (legs, legs_start, ready, stops, np.array([0]), 1),
        "z must be": (legs, legs_start, ready, stops, by_ready, 0),
    }
    for message, (lg, ls, rd, st, br, z) in bad.items():
        with pytest.raises(ValueError, match=message):
            kernels.bundle_pools(lg, ls, rd, st, br, z, 0, 0, 0.5)


def test_an_epoch_with_nothing_to_plan_enumerates_no_bundles() -> None:
    """With every courier busy past the plan's horizon there are no agents: a model whose own bundle rule takes
    three orders must not have every same-restaurant triple built anyway (288,100 of them here, seconds of work)."""
    snap = synthetic_snapshot(10, 120, 0)
    snap = replace(
        snap,
        order_restaurant=np.zeros(snap.n_orders, dtype=np.int64),
        order_ready=np.full(snap.n_orders, snap.time),
        courier_free_at=np.full(snap.n_couriers, snap.time + 200),
    )
    cands, plan = candidates_for(snap, CandidateConfig(k=16, max_bundle_size=3), PLAN_RULE)
    assert plan is None and cands.n_agents == 0 and cands.bundles.n == 0

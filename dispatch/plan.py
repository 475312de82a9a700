"""The rolling-horizon plan of Reyes et al. (2018), shared by the ``reyes`` heuristic and the ``plan`` rule.

Each epoch at time t (``shared/reference/mdrp-results.md``):

1. Pool U: open orders ready by ``t + lookahead``; couriers D: those free by ``t + lookahead``.
   Our addition: orders that no on-duty courier could deliver within the maximum click-to-door even
   alone and at once (a lower bound) leave the pool: they are lost whatever we do, and counted in U
   they would inflate Z and, bundled, drag savable orders down with them.
2. Target bundle size Z = ceil(|U| / |D|), at least 1.
3. Per restaurant, its pooled orders (by ready time) are inserted one by one into
   ``ceil(|U_r| / Z)`` routes at the cheapest position; route cost = travel minutes + β × the summed
   drop-off delays after pickup. Past Z orders a route takes an order only if that lowers its minutes
   per order. Orders whose ready times differ by more than ``max_ready_gap`` are not bundled.
   One remove-and-reinsert pass follows. Our addition: a route that no courier in D can serve
   within the maximum click-to-door (the route cost ignores that limit) is split into singles.
4. Priority groups: I = a bundle with an order that can no longer meet the click-to-door target;
   II = one that can no longer be picked up at its ready time; III = the rest. We add a group 0
   ahead of them: bundles holding an order that even the earliest courier would deliver within
   ``expiry_margin`` minutes of the maximum click-to-door (lost unless served now).
5. One linear assignment over (couriers in D) × bundles maximises the groups lexicographically (0, I,
   then II, then III, by large score offsets) and then the value
   ``w × N_s / (last drop-off − time d is free) − θ × (pickup − ready)``.
6. Commitment. The published heuristic may send a courier towards a restaurant before committing a
   bundle; our engine never diverts a courier, so the second stage becomes: commit a pair only if its
   courier is idle now and postponing ``interval`` minutes (the commitment horizon, 2) would delay the
   pickup past the bundle's ready time or past the courier's off-time (or any order has been ready for
   more than ``force_after`` minutes). Other pairs (busy couriers, early bundles) only reserve for this
   epoch; their orders return to the pool.

The ``plan`` conflict rule runs the same plan for an exported model, over each courier's best K of
the plan's bundles (the model's candidate count), and in step 5 ranks the pairs of one priority group by
a blend of the value above and the model's preference: its log-probability of the bundle among the
courier's candidates (:func:`blended_scores`). Groups and commitment stay the plan's, so orders about to
expire still come first and no courier leaves early; the learned scores choose among the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from dispatch import assemble, kernels
from dispatch.candidates import CandidateConfig, CandidateSet, generate
from dispatch.routes import route_times, sequence_rows
from dispatch.snapshot import (
    Assignment,
    BoolArray,
    FloatArray,
    IntArray,
    JointAction,
    Snapshot,
    travel_matrix,
    travel_minutes,
)

GROUP_BONUS = (1e9, 1e6, 1e3, 0.0)
PLAN_RULE = assemble.PLAN_RULE
# The ``plan`` rule's blend (chosen on training-seed instances 2-5 only, BC and InSPO seed 0, 16 instances):
# the learned term is the model's log-probability of the bundle among the courier's candidates, divided
# by LEARNED_SCALE and clipped to [-1, 0], so it moves a pair within its priority group by at most as
# much as the plan's own value does. Weights 0.25-0.75 with scales 2-10 scored within 0.2 min of one
# another; the model's term alone (weight 1) was 0.4-0.6 min slower than the plan without it.
LEARNED_WEIGHT = 0.5
LEARNED_SCALE = 5.0


@dataclass(frozen=True, slots=True)
class PlanParams:
    """Tunable parameters, tuned on instance seeds 0–5 only (``python -m simulator.heuristics.tune``)."""

    lookahead: int = 20
    theta: float = 1.0
    beta: float = 0.5
    throughput_weight: float = 5.0
    force_after: int = 20
    max_ready_gap: int = 40
    # Commitment horizon in minutes (step 6), not the caller's cadence, which the service cannot know: 2 was
    # tuned with decisions every 2 minutes and stayed best with decisions every minute (1 and 3 were no better).
    interval: int = 2
    expiry_margin: int = 20


@dataclass(frozen=True)
class Plan:
    """One epoch's plan: candidates over the plan's bundles, with the plan's scores and commitment.

    ``group`` and ``value`` are (agents, K): each pair's priority group (0 first) and ``1 + value`` of
    step 5; ``commit`` says which pairs are executed if chosen (the others reserve for this epoch).
    """

    cands: CandidateSet
    group: IntArray
    value: FloatArray
    commit: BoolArray


def block_travel(xy: FloatArray, stops_start: IntArray, meters_per_minute: float) -> tuple[IntArray, IntArray]:
    """Each block's travel matrix among its own points, row-major, concatenated; and where each begins.

    Block r holds the points ``stops_start[r] .. stops_start[r + 1] - 1`` of ``xy``. Its matrix is
    computed with the elementwise arithmetic of :func:`travel_matrix` (a - b per axis, then
    travel_minutes), so it holds the same whole minutes, for all blocks in one numpy pass.
    """
    sizes = np.diff(stops_start)
    area = sizes * sizes
    legs_start = np.concatenate([[0], np.cumsum(area)]).astype(np.int64)
    q = np.arange(legs_start[-1]) - np.repeat(legs_start[:-1], area)
    width = np.repeat(sizes, area)
    base = np.repeat(stops_start[:-1], area)
    a, b = base + q // width, base + q % width
    return travel_minutes(xy[a, 0] - xy[b, 0], xy[a, 1] - xy[b, 1], meters_per_minute), legs_start


def trimmed(rows: IntArray) -> IntArray:
    """``rows`` (groups padded with -1 at their ends) without the trailing columns that hold padding only."""
    width = max(1, int((rows >= 0).sum(axis=1).max(initial=1)))
    return rows[:, :width]


def bundle_pool(snap: Snapshot, pool: IntArray, z: int, params: PlanParams) -> IntArray:
    """Step 3: each restaurant's pooled orders bundled into routes, one row each (order indices in drop-off
    sequence, padded with -1 at the end to the longest route).

    Restaurants come in the order of their first order in ``pool``, their orders in pool order; the
    insertion loops of every restaurant run in one compiled call (:func:`dispatch.kernels.bundle_pools`,
    bit-identical to the Python that tests/test_plan.py keeps as the reference).
    """
    rest = snap.order_restaurant[pool]
    uniq, first, inv = np.unique(rest, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    pool_of = rank[inv]
    order = np.argsort(pool_of, kind="stable")
    grouped, grouped_pool = pool[order], pool_of[order]
    sizes = np.bincount(grouped_pool, minlength=uniq.size) + 1  # stops per restaurant: itself, then its orders
    stops_start = np.concatenate([[0], np.cumsum(sizes)])
    # Stop coordinates and ready times, restaurant by restaurant (its own stop first, ready 0 unused).
    is_rest = np.zeros(stops_start[-1], dtype=bool)
    is_rest[stops_start[:-1]] = True
    xy = np.empty((stops_start[-1], 2))
    xy[is_rest] = snap.restaurant_xy[uniq[np.argsort(rank)]]
    xy[~is_rest] = snap.order_xy[grouped]
    ready = np.zeros(stops_start[-1], dtype=np.int64)
    ready[~is_rest] = snap.order_ready[grouped]
    legs, legs_start = block_travel(xy, stops_start, snap.params.meters_per_minute)
    by_ready = np.lexsort((snap.order_ready[grouped], grouped_pool))  # stable within each restaurant
    local = np.asarray(by_ready - (stops_start[grouped_pool[by_ready]] - grouped_pool[by_ready]) + 1, dtype=np.int64)
    routes, route_pool = kernels.bundle_pools(
        legs, legs_start, ready, stops_start, local, z, params.max_ready_gap, snap.params.dropoff_service, params.beta
    )
    first_order = stops_start[:-1] - np.arange(uniq.size)  # index in ``grouped`` of each restaurant's first order
    # Padding (-1) reads a valid index (as stop 1) and is masked out again.
    members = np.where(routes > 0, grouped[first_order[route_pool][:, None] + np.maximum(routes, 1) - 1], -1)
    return trimmed(members)


def hopeless(snap: Snapshot, pool: IntArray) -> BoolArray:
    """Orders of ``pool`` that no courier on duty can deliver within the maximum click-to-door.

    A lower bound on each order's delivery: the earliest any on-duty courier can reach its
    restaurant (from where and when it is next free), picked up no earlier than ready, then
    carried alone. Past ``max_ctd`` even then, the order is lost whatever we do, and serving it
    would only take a courier from orders that can still be saved.
    """
    p, t = snap.params, snap.time
    on_duty = np.flatnonzero(snap.courier_off_time > t)
    if on_duty.size == 0:
        return np.ones(pool.size, dtype=bool)
    rest = snap.order_restaurant[pool]
    uniq, inv = np.unique(rest, return_inverse=True)
    start = np.maximum(np.maximum(snap.courier_free_at[on_duty], snap.courier_on_time[on_duty]), t)
    travel = travel_matrix(snap.courier_xy[on_duty], snap.restaurant_xy[uniq], p.meters_per_minute)
    reach = (start[:, None] + travel).min(axis=0)
    pickup = np.maximum(snap.order_ready[pool], reach[inv] + p.half_pickup)
    singles = sequence_rows(snap, pool[:, None])
    delivered = pickup + singles.dropoff_offset[:, 0]
    return np.asarray(delivered - snap.order_placement[pool] > p.max_ctd)


def make_plan(snapshot: Snapshot, params: PlanParams = PlanParams(), k: int = 0) -> Plan | None:
    """Steps 1-4 and the commitment test of step 6; None when nothing can be planned this epoch.

    ``k`` keeps each courier's best k bundles (ranked as :func:`dispatch.candidates.generate` ranks
    them; 0: every bundle, as the heuristic plans).
    """
    prm, snap, t = params, snapshot, snapshot.time
    p = snap.params
    pool = np.flatnonzero(snap.order_ready <= t + prm.lookahead)
    horizon_free = np.maximum(snap.courier_free_at, snap.courier_on_time)
    couriers = np.flatnonzero((horizon_free <= t + prm.lookahead) & (snap.courier_off_time > t))
    if pool.size == 0 or couriers.size == 0:
        return None
    pool = pool[~hopeless(snap, pool)]
    if pool.size == 0:
        return None
    z = max(1, math.ceil(pool.size / couriers.size))
    rows = bundle_pool(snap, pool, z, prm)
    # A route that no courier can serve (the cost-driven bundling ignores the click-to-door limit and
    # the couriers' off-times) would strand every order in it: serve its orders as singles instead, after
    # the kept routes, route by route. Only the multi-order routes need the test.
    stranded = (rows >= 0).sum(axis=1) > 1
    if stranded.any():
        routes = sequence_rows(snap, trimmed(rows[stranded]))
        stranded[stranded] = ~route_times(snap, couriers, routes).feasible.any(axis=0)
    if stranded.any():
        loose = rows[stranded]
        loose = loose[loose >= 0]
        singles = np.full((loose.size, rows.shape[1]), -1, dtype=np.int64)
        singles[:, 0] = loose
        rows = trimmed(np.concatenate([rows[~stranded], singles]))
    bundles = sequence_rows(snap, rows)
    cands = generate(snap, CandidateConfig(k=k), agents=couriers, bundles=bundles)
    if cands.k == 0:
        return None
    available = snap.available()
    cands = replace(cands, committable=available[cands.agents])
    times = cands.times
    # Priority group of each bundle (step 4), from its earliest possible pickup.
    earliest_arrival = (times.start + times.travel_to_restaurant + p.half_pickup).min(axis=0)
    earliest_pickup = np.maximum(bundles.ready, t + p.half_pickup)
    safe = np.where(bundles.orders >= 0, bundles.orders, 0)
    best_ctd = np.where(
        bundles.orders >= 0,
        earliest_pickup[:, None] + bundles.dropoff_offset - snap.order_placement[safe],
        0,
    ).max(axis=1)
    # Group 0 (our addition): an order that would be lost unless served soon comes first.
    best_ctd_any = np.where(
        bundles.orders >= 0,
        np.maximum(bundles.ready, earliest_arrival)[:, None] + bundles.dropoff_offset - snap.order_placement[safe],
        0,
    ).max(axis=1)
    group = np.where(
        best_ctd_any > p.max_ctd - prm.expiry_margin,
        0,
        np.where(best_ctd > p.target_ctd, 1, np.where(earliest_arrival > bundles.ready, 2, 3)),
    )
    # Value (step 5).
    busy_for = np.maximum(times.last_dropoff - times.start, 1)
    value = (
        prm.throughput_weight * bundles.size[None, :] / busy_for
        - prm.theta * np.maximum(times.pickup - bundles.ready[None, :], 0) / 10.0
    )
    # Commitment (step 6), per pair: postponing by the horizon would make the pickup late, an order has waited
    # too long, or the courier's shift ends before the next epoch's pickup.
    arrival = t + times.travel_to_restaurant + p.half_pickup
    late_if_postponed = arrival + prm.interval > bundles.ready[None, :]
    shift_ends = arrival + prm.interval > snap.courier_off_time[cands.agents][:, None]
    waited = np.any((t - snap.order_ready[safe] > prm.force_after) & (bundles.orders >= 0), axis=1)
    commit = (late_if_postponed | shift_ends | np.reshape(waited, (1, -1))) & available[cands.agents][:, None]
    return Plan(cands, group[np.where(cands.mask, cands.bundle, 0)], cands.take(value), cands.take(commit))


def plan_scores(plan: Plan) -> FloatArray:
    """(agents, K+1) scores of the heuristic: priority group offset, then ``1 + value``; wait scores 0."""
    cands = plan.cands
    scores = np.zeros((cands.n_agents, cands.k + 1))
    scores[:, : cands.k] = np.where(cands.mask, plan.value + np.asarray(GROUP_BONUS)[plan.group] + 1.0, -np.inf)
    return scores


def blended_scores(plan: Plan, logits: FloatArray) -> FloatArray:
    """The ``plan`` rule's scores: the plan's, with ``1 + value`` blended with the model's preference.

    ``logits`` is the model's (agents, K+1) output (wait last, unused: the plan decides who waits). The
    model's term is its log-probability of each bundle among the courier's feasible candidates, scaled
    and clipped to [-1, 0], plus 1; both terms are near 1, so the group offsets still decide first.
    """
    cands = plan.cands
    k = cands.k
    raw = np.where(cands.mask, logits[:, :k], -np.inf)
    top = raw.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a courier with no feasible candidate: all masked
        logp = raw - top - np.log(np.exp(raw - top).sum(axis=1, keepdims=True))
    learned = 1.0 + np.clip(logp / LEARNED_SCALE, -1.0, 0.0)
    mixed = (1.0 - LEARNED_WEIGHT) * (1.0 + plan.value) + LEARNED_WEIGHT * learned
    scores = np.zeros((cands.n_agents, k + 1))
    scores[:, :k] = np.where(cands.mask, np.asarray(GROUP_BONUS)[plan.group] + mixed, -np.inf)
    return scores


def execute(plan: Plan, scores: FloatArray) -> tuple[assemble.Assembled, tuple[Assignment, ...]]:
    """Step 5's assignment over ``scores``, then step 6: the committed joint action, and the reservations.

    Reservations are the planned pairs of couriers not free yet; pairs of free couriers that need not
    leave yet are neither executed nor reserved (their orders return to the pool).
    """
    cands = plan.cands
    planned = assemble.assignment(cands, scores)
    rows = np.arange(cands.n_agents)
    picked = planned.choice != assemble.WAIT
    slot = np.maximum(planned.choice, 0)
    committed = picked & plan.commit[rows, slot]
    choice = np.where(committed, planned.choice, assemble.WAIT)
    busy = picked & ~np.asarray(cands.committable)
    held = tuple(
        Assignment(int(cands.agents[i]), cands.bundles.members(int(cands.bundle[i, choice_i])))
        for i, choice_i in zip(np.flatnonzero(busy), planned.choice[busy], strict=True)
    )
    action = assemble.Assembled(assemble.to_action(cands, choice), choice, np.zeros(cands.n_agents))
    return action, held


def candidates_for(snapshot: Snapshot, config: CandidateConfig, rule: str) -> tuple[CandidateSet, Plan | None]:
    """A model's candidate set under its conflict rule: the plan's for ``plan`` (with the plan), else the generator's.

    Under ``plan`` only ``config.k`` applies (the plan picks its own agents, bundles and commitment); an
    epoch with nothing to plan gets an empty candidate set.
    """
    if rule != PLAN_RULE:
        return generate(snapshot, config), None
    plan = make_plan(snapshot, PlanParams(), k=config.k)
    if plan is None:
        # No agents, so no bundles either: the model's own bundle rule (triples, say) is never enumerated here.
        nothing = np.zeros(0, dtype=np.int64)
        return generate(snapshot, config, agents=nothing, bundles=sequence_rows(snapshot, nothing[:, None])), None
    return plan.cands, plan


def joint_action(cands: CandidateSet, plan: Plan | None, scores: FloatArray, rule: str) -> assemble.Assembled:
    """The conflict-free joint action for a model's ``scores`` under ``rule`` (see :func:`candidates_for`)."""
    if rule != PLAN_RULE:
        return assemble.assemble(cands, scores, rule)
    if plan is None:  # nothing to plan this epoch, so no agents: everyone waits
        n = cands.n_agents
        return assemble.Assembled(JointAction(), np.full(n, assemble.WAIT, dtype=np.int64), np.zeros(n))
    return execute(plan, blended_scores(plan, scores))[0]

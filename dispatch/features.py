"""The feature encoder: a snapshot's candidate set as fixed, documented tensors.

Shapes: ``agent`` (N, len(AGENT_FEATURES)), ``cand`` (N, K, len(CANDIDATE_FEATURES)),
``cand_mask`` (N, K). Every time is in minutes scaled by 1/10 unless stated. The lists below are
the contract with every trained model: changing meaning or order bumps ``dispatch.SCHEMA_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch.candidates import CandidateSet
from dispatch.snapshot import BoolArray, Snapshot

AGENT_FEATURES = (
    "minutes_to_off_time/60",
    "minutes_on_duty/60",
    "idle_minutes/10",
    "open_orders/100",
    "available_couriers/100",
    "open_orders_per_available_courier/10",
    "time_of_day/1440",
    "candidates_feasible/K",
)
CANDIDATE_FEATURES = (
    "travel_to_restaurant/10",
    "wait_at_restaurant/10",
    "pickup_from_now/10",
    "bundle_size",
    "mean_click_to_door/40",
    "max_click_to_door/40",
    "max_overage/10",
    "min_slack_to_target/10",
    "mean_minutes_since_placement/10",
    "ready_from_now/10",
    "route_minutes/10",
    "orders_per_route_hour/10",
    "pickup_after_ready/10",
    "rank_in_list/K",
    "competing_agents/10",
    "pickup_behind_best_agent/10",
)


@dataclass(frozen=True)
class Encoded:
    """Model inputs for one snapshot."""

    agent: np.ndarray
    cand: np.ndarray
    cand_mask: BoolArray


def encode(snapshot: Snapshot, cands: CandidateSet) -> Encoded:
    """Encode the candidate set of ``snapshot`` (float32 tensors, padded slots zeroed)."""
    t = snapshot.time
    p = snapshot.params
    n, k = cands.bundle.shape
    a = cands.agents
    n_avail = int(snapshot.available().sum())
    n_open = snapshot.n_orders
    agent = np.zeros((n, len(AGENT_FEATURES)), dtype=np.float32)
    if n:
        agent[:, 0] = (snapshot.courier_off_time[a] - t) / 60.0
        agent[:, 1] = (t - snapshot.courier_on_time[a]) / 60.0
        agent[:, 2] = np.maximum(t - snapshot.courier_free_at[a], 0) / 10.0
        agent[:, 3] = n_open / 100.0
        agent[:, 4] = n_avail / 100.0
        agent[:, 5] = n_open / max(n_avail, 1) / 10.0
        agent[:, 6] = (t % 1440) / 1440.0
        agent[:, 7] = cands.mask.sum(axis=1) / max(k, 1)
    cand = np.zeros((n, k, len(CANDIDATE_FEATURES)), dtype=np.float32)
    if n and k:
        tm = cands.times
        b = cands.bundles
        size = b.size.astype(np.float64)
        safe = np.where(b.orders >= 0, b.orders, 0)
        valid = b.orders >= 0
        since = np.where(valid, t - snapshot.order_placement[safe], 0).sum(axis=1) / size
        ready_from_now = b.ready - t
        pickup = tm.pickup.astype(np.float64)
        travel = tm.travel_to_restaurant.astype(np.float64)
        arrival = tm.start + travel + p.half_pickup
        route = np.maximum(tm.free_at - t, 1).astype(np.float64)
        slack = np.where(
            valid[None],
            snapshot.order_placement[safe][None] + p.target_ctd - (pickup[:, :, None] + b.dropoff_offset[None]),
            np.inf,
        ).min(axis=2)
        # Coordination context: how many agents hold the bundle and how far behind the best one this is.
        held = np.zeros(b.n)
        np.add.at(held, cands.bundle[cands.mask], 1)
        best_pickup = np.where(tm.feasible, pickup, np.inf).min(axis=0)
        cols = [
            travel,
            np.maximum(b.ready[None] - arrival, 0),
            pickup - t,
            np.broadcast_to(size, pickup.shape),
            tm.sum_ctd / size / 4.0,
            tm.max_ctd / 4.0,
            np.maximum(tm.max_ctd - p.target_ctd, 0),
            slack,
            np.broadcast_to(since, pickup.shape),
            np.broadcast_to(ready_from_now, pickup.shape),
            route,
            size * 600.0 / route,
            pickup - b.ready[None],
            None,
            np.broadcast_to(held, pickup.shape),
            pickup - best_pickup[None],
        ]
        scale = [10, 10, 10, 1, 10, 10, 10, 10, 10, 10, 10, 100, 10, 1, 10, 10]
        for j, (col, s) in enumerate(zip(cols, scale, strict=True)):
            if col is None:
                cand[:, :, j] = np.arange(k)[None, :] / k
            else:
                cand[:, :, j] = cands.take(np.asarray(col, dtype=np.float64)) / s
        cand[~cands.mask] = 0.0
    return Encoded(agent, cand, cands.mask.copy())

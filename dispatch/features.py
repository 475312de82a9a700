"""The feature encoder: a snapshot's candidate set as fixed, documented tensors.

Shapes: ``agent`` (N, len(AGENT_FEATURES)), ``cand`` (N, K, len(CANDIDATE_FEATURES)),
``cand_mask`` (N, K). Every time is in minutes scaled by 1/10 unless stated. The lists below are
the contract with every trained model: changing meaning or order bumps ``dispatch.SCHEMA_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch.candidates import CandidateSet
from dispatch.kernels import CANDIDATE_COLUMNS, agent_features, candidate_features
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
# The compiled encoder writes exactly these columns, in this order.
assert len(CANDIDATE_FEATURES) == CANDIDATE_COLUMNS
assert len(AGENT_FEATURES) == 8  # agent_features: 3 per-agent columns, 4 shared ones, the feasible share


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
    # Columns 3-6 are the same for every agent: open orders, available couriers, their ratio, time of day.
    shared = [n_open / 100.0, n_avail / 100.0, n_open / max(n_avail, 1) / 10.0, (t % 1440) / 1440.0]
    agent = agent_features(
        snapshot.courier_off_time[a], snapshot.courier_on_time[a], snapshot.courier_free_at[a], cands.mask, t, shared
    )
    if n and k and cands.bundles.n:
        tm = cands.times
        bun = cands.bundles
        # Coordination context: how many agents hold the bundle, and the earliest pickup any agent could make.
        held = np.bincount(cands.bundle[cands.mask], minlength=bun.n)
        cand = candidate_features(
            cands.bundle,
            cands.mask,
            tm,
            bun,
            snapshot.order_placement,
            held,
            tm.best_pickup,
            t,
            p.half_pickup,
            p.target_ctd,
        )
    else:
        cand = np.zeros((n, k, len(CANDIDATE_FEATURES)), dtype=np.float32)
    return Encoded(agent, cand, cands.mask.copy())

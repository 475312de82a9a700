"""Bundles of same-restaurant orders and the exact MDRP timing of a courier serving one.

Timing (MDRP): a courier free at ``t0`` at point ``p`` reaches restaurant ``r`` at
``t0 + T(p, r)``; it picks up at ``max(latest ready, arrival + pickup/2)`` and leaves ``pickup/2``
later; each customer is served ``dropoff/2`` after arrival and left ``dropoff/2`` later. Travel is
``ceil(distance / meters_per_minute)``. The offsets after pickup depend on the bundle alone, so the
courier-dependent part of a (courier, bundle) pair is one travel time and one max.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from dispatch.snapshot import FloatArray, IntArray, Snapshot, travel_matrix, travel_minutes


@dataclass(frozen=True)
class Bundles:
    """Candidate bundles over a snapshot's open orders, each in a fixed drop-off sequence.

    ``orders`` is (B, S) order indices padded with -1; ``dropoff_offset`` is (B, S) minutes from the
    pickup instant to each drop-off instant (padded with 0); ``free_offset`` is the minutes from
    pickup until the courier is free at the last customer.
    """

    orders: IntArray
    size: IntArray
    restaurant: IntArray
    ready: IntArray
    placement_min: IntArray
    dropoff_offset: IntArray
    free_offset: IntArray
    last_xy: FloatArray

    @property
    def n(self) -> int:
        """Number of bundles."""
        return int(self.orders.shape[0])

    def members(self, b: int) -> tuple[int, ...]:
        """Order indices of bundle ``b`` in drop-off sequence."""
        row = self.orders[b]
        return tuple(int(o) for o in row[row >= 0])


def _sequence_offsets(snapshot: Snapshot, seq: tuple[int, ...]) -> tuple[list[int], int]:
    """Drop-off offsets from pickup, and the offset at which the courier is free, for one sequence."""
    p = snapshot.params
    mpm = p.meters_per_minute
    r = snapshot.order_restaurant[seq[0]]
    prev = snapshot.restaurant_xy[r]
    clock = p.pickup_service - p.half_pickup  # leave the restaurant
    offsets = []
    for o in seq:
        here = snapshot.order_xy[o]
        clock += int(travel_minutes(here[0] - prev[0], here[1] - prev[1], mpm))
        clock += p.half_dropoff
        offsets.append(clock)
        clock += p.dropoff_service - p.half_dropoff
        prev = here
    return offsets, clock


def make_bundles(
    snapshot: Snapshot,
    orders: IntArray | None = None,
    max_size: int = 2,
    max_ready_gap: int = 15,
) -> Bundles:
    """Singles for every open order plus same-restaurant bundles up to ``max_size``.

    Bundles join orders whose ready times lie within ``max_ready_gap`` minutes; each bundle's drop-off
    sequence minimises the summed drop-off offsets.
    """
    if orders is None:
        orders = np.arange(snapshot.n_orders, dtype=np.int64)
    candidates: list[tuple[int, ...]] = [(int(o),) for o in orders]
    if max_size >= 2 and len(orders):
        by_rest: dict[int, list[int]] = {}
        for o in orders:
            by_rest.setdefault(int(snapshot.order_restaurant[o]), []).append(int(o))
        for members in by_rest.values():
            if len(members) < 2:
                continue
            members.sort(key=lambda o: int(snapshot.order_ready[o]))
            for k in range(2, min(max_size, len(members)) + 1):
                for combo in itertools.combinations(members, k):
                    ready = snapshot.order_ready[list(combo)]
                    if int(ready.max() - ready.min()) <= max_ready_gap:
                        candidates.append(combo)
    return sequence_bundles(snapshot, candidates, reorder=True)


def sequence_bundles(snapshot: Snapshot, groups: list[tuple[int, ...]], reorder: bool = False) -> Bundles:
    """Tabulate the timing of each group; with ``reorder`` pick its best drop-off sequence first."""
    n = len(groups)
    width = max((len(g) for g in groups), default=1)
    orders = np.full((n, width), -1, dtype=np.int64)
    offs = np.zeros((n, width), dtype=np.int64)
    free = np.zeros(n, dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    last_xy = np.zeros((n, 2), dtype=np.float64)
    for b, group in enumerate(groups):
        best: tuple[int, tuple[int, ...], list[int], int] | None = None
        perms = itertools.permutations(group) if reorder and len(group) > 1 else [group]
        for seq in perms:
            offsets, free_off = _sequence_offsets(snapshot, tuple(seq))
            cost = sum(offsets)
            if best is None or cost < best[0]:
                best = (cost, tuple(seq), offsets, free_off)
        assert best is not None
        _, seq, offsets, free_off = best
        orders[b, : len(seq)] = seq
        offs[b, : len(seq)] = offsets
        free[b] = free_off
        size[b] = len(seq)
        last_xy[b] = snapshot.order_xy[seq[-1]]
    safe = np.where(orders >= 0, orders, 0)
    ready = np.where(orders >= 0, snapshot.order_ready[safe], np.iinfo(np.int64).min).max(axis=1)
    placement = np.where(orders >= 0, snapshot.order_placement[safe], np.iinfo(np.int64).max).min(axis=1)
    restaurant = snapshot.order_restaurant[orders[:, 0]] if n else np.zeros(0, dtype=np.int64)
    return Bundles(
        orders=orders,
        size=size,
        restaurant=np.asarray(restaurant, dtype=np.int64),
        ready=ready.astype(np.int64),
        placement_min=placement.astype(np.int64),
        dropoff_offset=offs,
        free_offset=free,
        last_xy=last_xy,
    )


@dataclass(frozen=True)
class RouteTimes:
    """Exact MDRP times of every (courier, bundle) pair, shape (n_couriers, n_bundles)."""

    start: IntArray
    travel_to_restaurant: IntArray
    pickup: IntArray
    last_dropoff: IntArray
    free_at: IntArray
    max_ctd: IntArray
    sum_ctd: IntArray
    feasible: np.ndarray


def route_times(snapshot: Snapshot, couriers: IntArray, bundles: Bundles) -> RouteTimes:
    """Times for each listed courier serving each bundle, starting when the courier is free.

    A pair is infeasible when the pickup would fall after the courier's off-time or an order would
    reach its customer later than the maximum click-to-door.
    """
    p = snapshot.params
    start = np.maximum(snapshot.courier_free_at[couriers], snapshot.time)[:, None]
    travel = travel_matrix(
        snapshot.courier_xy[couriers], snapshot.restaurant_xy[bundles.restaurant], p.meters_per_minute
    )
    pickup = np.maximum(bundles.ready[None, :], start + travel + p.half_pickup)
    drop = pickup[:, :, None] + bundles.dropoff_offset[None, :, :]
    safe = np.where(bundles.orders >= 0, bundles.orders, 0)
    placement = snapshot.order_placement[safe]
    valid = bundles.orders >= 0
    ctd = np.where(valid[None], drop - placement[None], 0)
    max_ctd = ctd.max(axis=2)
    sum_ctd = ctd.sum(axis=2)
    last = np.take_along_axis(drop, (bundles.size - 1)[None, :, None].repeat(len(couriers), 0), axis=2)[..., 0]
    feasible = (pickup <= snapshot.courier_off_time[couriers][:, None]) & (max_ctd <= p.max_ctd)
    return RouteTimes(
        start=np.broadcast_to(start, pickup.shape),
        travel_to_restaurant=travel,
        pickup=pickup,
        last_dropoff=last,
        free_at=pickup + bundles.free_offset[None, :],
        max_ctd=max_ctd,
        sum_ctd=sum_ctd,
        feasible=feasible,
    )

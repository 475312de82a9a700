"""Bundles of same-restaurant orders and the exact MDRP timing of a courier serving one.

Timing (MDRP): a courier free at ``t0`` at point ``p`` reaches restaurant ``r`` at
``t0 + T(p, r)``; it picks up at ``max(latest ready, arrival + pickup/2)`` and leaves ``pickup/2``
later; each customer is served ``dropoff/2`` after arrival and left ``dropoff/2`` later. Travel is
``ceil(distance / meters_per_minute)``. The offsets after pickup depend on the bundle alone, so the
courier-dependent part of a (courier, bundle) pair is one travel time and one max.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from dispatch.kernels import bundle_stats, close_pairs, ctd_terms, pair_offsets, pair_times, top_k_pairs
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


def make_bundles(
    snapshot: Snapshot,
    orders: IntArray | None = None,
    max_size: int = 2,
    max_ready_gap: int = 15,
) -> Bundles:
    """Singles for every open order plus same-restaurant bundles up to ``max_size``.

    Bundles join orders whose ready times lie within ``max_ready_gap`` minutes; each bundle's drop-off
    sequence minimises the summed drop-off offsets. Rows: singles (in ``orders`` order), then pairs,
    then larger bundles, members listed by ready time.
    """
    if orders is None:
        orders = np.arange(snapshot.n_orders, dtype=np.int64)
    orders = np.asarray(orders, dtype=np.int64)
    width = 1 if max_size < 2 or orders.size < 2 else 2
    singles = np.full((orders.size, width), -1, dtype=np.int64)
    singles[:, 0] = orders
    rows = [singles]
    larger: list[tuple[int, ...]] = []
    if width == 2:
        # Members in ready-time order (stable), so a bundle lists its orders by ready time.
        by_ready = orders[np.argsort(snapshot.order_ready[orders], kind="stable")]
        rest = snapshot.order_restaurant[by_ready]
        ready = snapshot.order_ready[by_ready]
        i, j = close_pairs(rest, ready, max_ready_gap)
        if i.size:
            rows.append(np.stack([by_ready[i], by_ready[j]], axis=1))
        else:
            # No pair, hence no larger bundle either (any two members of one would form a pair): singles only.
            rows[0] = rows[0][:, :1]
            width = 1
        if max_size >= 3 and width == 2:
            groups: dict[int, list[int]] = {}
            for o in by_ready:
                groups.setdefault(int(snapshot.order_restaurant[o]), []).append(int(o))
            for members in groups.values():
                for k in range(3, min(max_size, len(members)) + 1):
                    for combo in itertools.combinations(members, k):
                        r = snapshot.order_ready[list(combo)]
                        if int(r.max() - r.min()) <= max_ready_gap:
                            larger.append(combo)
    matrix = np.concatenate(rows, axis=0)
    if larger:
        wide = max(len(g) for g in larger)
        padded = np.pad(matrix, ((0, 0), (0, wide - width)), constant_values=-1)
        matrix = np.concatenate([padded, _matrix(larger, wide)])
    return _tabulate(snapshot, matrix, reorder=True)


def _offsets(snapshot: Snapshot, seqs: IntArray) -> tuple[IntArray, IntArray]:
    """Drop-off offsets from pickup (B, S) and the offset at which the courier is free (B,).

    ``seqs`` is (B, S) order indices in drop-off sequence, padded with -1; vectorised over bundles.
    """
    p = snapshot.params
    n, width = seqs.shape
    prev = snapshot.restaurant_xy[snapshot.order_restaurant[np.maximum(seqs[:, 0], 0)]] if n else np.zeros((0, 2))
    clock = np.full(n, p.pickup_service - p.half_pickup, dtype=np.int64)  # leave the restaurant
    offs = np.zeros((n, width), dtype=np.int64)
    for s in range(width):
        valid = seqs[:, s] >= 0
        here = snapshot.order_xy[np.where(valid, seqs[:, s], 0)]
        arrive = clock + travel_minutes(here[:, 0] - prev[:, 0], here[:, 1] - prev[:, 1], p.meters_per_minute)
        drop = arrive + p.half_dropoff
        offs[:, s] = np.where(valid, drop, 0)
        clock = np.where(valid, drop + (p.dropoff_service - p.half_dropoff), clock)
        prev = np.where(valid[:, None], here, prev)
    return offs, clock


def _first_legs(snapshot: Snapshot, orders: IntArray) -> IntArray:
    """Travel minutes from each order's restaurant to its customer, elementwise over ``orders``."""
    r_xy = snapshot.restaurant_xy[snapshot.order_restaurant[orders]]
    o_xy = snapshot.order_xy[orders]
    return travel_minutes(o_xy[..., 0] - r_xy[..., 0], o_xy[..., 1] - r_xy[..., 1], snapshot.params.meters_per_minute)


def _matrix(groups: list[tuple[int, ...]], width: int) -> IntArray:
    if width <= 2 and groups:
        # Singles and pairs (the common case) without a Python loop per group.
        flat = [g + (-1,) * (width - len(g)) for g in groups]
        return np.array(flat, dtype=np.int64).reshape(len(groups), width)
    out = np.full((len(groups), width), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
    return out


def sequence_bundles(snapshot: Snapshot, groups: list[tuple[int, ...]], reorder: bool = False) -> Bundles:
    """Tabulate the timing of each group (kept in the given drop-off sequence).

    With ``reorder``, each group first takes the sequence with the smallest summed drop-off offsets
    (ties: the first in ``itertools.permutations`` order).
    """
    width = max((len(g) for g in groups), default=1)
    return _tabulate(snapshot, _matrix(groups, width), reorder)


def sequence_rows(snapshot: Snapshot, orders: IntArray) -> Bundles:
    """:func:`sequence_bundles` for groups already in a (B, S) matrix, each row padded with -1 at its end.

    The matrix is used as given (callers trim columns that hold padding only), so no group goes through a
    Python tuple: the plan's routes and pools arrive as arrays.
    """
    return _tabulate(snapshot, np.asarray(orders, dtype=np.int64), reorder=False)


def _tabulate(snapshot: Snapshot, orders: IntArray, reorder: bool) -> Bundles:
    """:func:`sequence_bundles` on a (B, S) matrix of order indices padded with -1."""
    n, width = orders.shape
    if reorder and width == 2:
        # Pair (x, y) drops x at c + T(r, x) + dropoff/2 and y dropoff + T(x, y) later, so its summed
        # offsets are 2 T(r, x) + terms shared by both orders: (b, a) is strictly cheaper than (a, b)
        # exactly when b's customer is strictly closer to the restaurant. Decide from the first legs.
        # Distances stay in numpy (T(x, y) = T(y, x) exactly); the kernel does the integer rest.
        p = snapshot.params
        leg = _first_legs(snapshot, np.arange(snapshot.n_orders))
        xy_a, xy_b = snapshot.order_xy[orders[:, 0]], snapshot.order_xy[np.maximum(orders[:, 1], 0)]
        between = travel_minutes(xy_b[:, 0] - xy_a[:, 0], xy_b[:, 1] - xy_a[:, 1], p.meters_per_minute)
        orders, offs, free = pair_offsets(
            orders, leg, between, p.pickup_service - p.half_pickup, p.half_dropoff, p.dropoff_service
        )
    elif reorder and width > 2:
        # Every permutation of every multi-order group, evaluated in one vectorised pass.
        rows: list[tuple[int, ...]] = []
        owner: list[int] = []
        for b, row in enumerate(orders.tolist()):
            g = [o for o in row if o >= 0]
            if len(g) > 1:
                for perm in itertools.permutations(g):
                    rows.append(perm)
                    owner.append(b)
        if rows:
            cand = _matrix(rows, width)
            cost = _offsets(snapshot, cand)[0].sum(axis=1)
            own = np.asarray(owner)
            order = np.lexsort((np.arange(len(rows)), cost, own))  # per group: cheapest, then first
            first = np.ones(len(rows), dtype=bool)
            first[1:] = own[order][1:] != own[order][:-1]
            best = order[first]
            orders = orders.copy()
            orders[own[best]] = cand[best]
    if not (reorder and width == 2):
        offs, free = _offsets(snapshot, orders)
    size, ready, placement, restaurant, last = bundle_stats(
        orders, snapshot.order_ready, snapshot.order_placement, snapshot.order_restaurant
    )
    return Bundles(
        orders=orders,
        size=size,
        restaurant=restaurant,
        ready=ready,
        placement_min=placement,
        dropoff_offset=offs,
        free_offset=free.astype(np.int64),
        last_xy=snapshot.order_xy[last] if n else np.zeros((0, 2)),
    )


T = TypeVar("T")


class _lazy(Generic[T]):
    """``functools.cached_property`` without its lock: on Python 3.11 that lock is one per property and
    shared by every instance, so two server threads building different requests' pair matrices would
    wait on each other. Two threads racing on one instance both compute the same value; one is kept."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        value = self.func(obj)
        obj.__dict__[self.name] = value  # a frozen dataclass still has a __dict__; later reads skip this
        return value


@dataclass(frozen=True)
class RouteTimes:
    """Exact MDRP times of every (courier, bundle) pair, shape (n_couriers, n_bundles).

    Held as per-courier and per-bundle terms: every pair time is a gather, a max and a sum of them. The
    (couriers × bundles) matrices (a 512 × 2048 city has millions of pairs) are built only when asked
    for (the heuristics, candidate lists that rank every bundle or use ``cover``, logging); the top-K
    pass (:meth:`top_k`) and the feature kernel compute what they need row by row or at their slots.
    """

    start_at: IntArray
    off_time: IntArray
    # Travel minutes (couriers × restaurants) and each bundle's column in it.
    travel_cr: IntArray
    restaurant_col: IntArray
    ready: IntArray
    size: IntArray
    # Per bundle, the largest (drop-off offset − placement) of its orders: max click-to-door − pickup.
    max_ctd_offset: IntArray
    ctd_offset_sum: IntArray
    last_offset: IntArray
    free_offset: IntArray
    half_pickup: int
    max_ctd_limit: int

    @property
    def shape(self) -> tuple[int, int]:
        """(couriers, bundles)."""
        return int(self.start_at.shape[0]), int(self.restaurant_col.shape[0])

    @property
    def _terms(self) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int, int]:
        """What every pair time is computed from, in :func:`dispatch.kernels.pair_times` order."""
        return (
            self.travel_cr,
            self.restaurant_col,
            self.start_at,
            self.off_time,
            self.ready,
            self.max_ctd_offset,
            self.half_pickup,
            self.max_ctd_limit,
        )

    @_lazy
    def _pairs(self) -> tuple[IntArray, np.ndarray, IntArray]:
        return pair_times(*self._terms)

    @_lazy
    def pickup(self) -> IntArray:
        """Pickup minute: max(ready, start + travel + pickup service / 2)."""
        return self._pairs[0]

    @_lazy
    def feasible(self) -> np.ndarray:
        """Pickup no later than the courier's off-time and every order within the click-to-door limit."""
        return self._pairs[1]

    @_lazy
    def best_pickup(self) -> IntArray:
        """Per bundle, the earliest feasible pickup over these couriers (int64 max where none is feasible)."""
        return self._pairs[2]

    def top_k(self, k: int) -> tuple[IntArray, np.ndarray]:
        """Each courier's ``k`` best bundles (:func:`dispatch.kernels.top_k_pairs`): (bundle per slot,
        feasibility per slot). Records ``best_pickup`` from the same pass."""
        chosen, mask, best = top_k_pairs(*self._terms, self.size, k)
        self.__dict__.setdefault("best_pickup", best)  # what the cached property would compute
        return chosen, mask

    @_lazy
    def travel_to_restaurant(self) -> IntArray:
        """Travel minutes from each courier's start to each bundle's restaurant."""
        return self.travel_cr[:, self.restaurant_col]

    @_lazy
    def max_ctd(self) -> IntArray:
        """Largest click-to-door minutes among the bundle's orders."""
        return self.pickup + self.max_ctd_offset[None, :]

    @_lazy
    def start(self) -> IntArray:
        """Minute each courier starts (free, or now), broadcast over bundles."""
        return np.broadcast_to(self.start_at[:, None], self.shape)

    @_lazy
    def last_dropoff(self) -> IntArray:
        """Minute of the last drop-off."""
        return self.pickup + self.last_offset[None, :]

    @_lazy
    def free_at(self) -> IntArray:
        """Minute the courier is free again at the last customer."""
        return self.pickup + self.free_offset[None, :]

    @_lazy
    def sum_ctd(self) -> IntArray:
        """Summed click-to-door minutes of the bundle's orders."""
        return self.pickup * self.size[None, :] + self.ctd_offset_sum[None, :]


def route_times(snapshot: Snapshot, couriers: IntArray, bundles: Bundles) -> RouteTimes:
    """Times for each listed courier serving each bundle, starting when the courier is free.

    A pair is infeasible when the pickup would fall after the courier's off-time or an order would
    reach its customer later than the maximum click-to-door.
    """
    p = snapshot.params
    # A courier not yet on duty starts at its on-time even if a client sends an earlier free_at.
    start = np.maximum(
        np.maximum(snapshot.courier_free_at[couriers], snapshot.courier_on_time[couriers]), snapshot.time
    )
    # Travel depends on the restaurant only: one (couriers × restaurants) matrix, gathered per bundle. Over
    # every restaurant when they are few next to the bundles (no sort), else over the ones bundles use.
    if snapshot.restaurant_xy.shape[0] <= bundles.n:
        used, at = snapshot.restaurant_xy, bundles.restaurant
    else:
        idx, at = np.unique(bundles.restaurant, return_inverse=True)
        used = snapshot.restaurant_xy[idx]
    travel_cr = travel_matrix(snapshot.courier_xy[couriers], used, p.meters_per_minute)
    # Every drop-off is pickup + a per-bundle offset, so click-to-door splits into pickup + a bundle
    # constant: (couriers × bundles) work only, never (couriers × bundles × bundle size).
    rel_max, ctd_offset_sum, last_offset = ctd_terms(
        bundles.orders, bundles.dropoff_offset, bundles.size, snapshot.order_placement
    )
    return RouteTimes(
        start_at=start,
        off_time=snapshot.courier_off_time[couriers],
        travel_cr=travel_cr,
        restaurant_col=np.asarray(at, dtype=np.int64),
        ready=bundles.ready,
        size=bundles.size,
        max_ctd_offset=rel_max,
        ctd_offset_sum=ctd_offset_sum,
        last_offset=last_offset,
        free_offset=bundles.free_offset,
        half_pickup=p.half_pickup,
        max_ctd_limit=p.max_ctd,
    )

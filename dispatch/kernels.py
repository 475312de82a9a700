"""Compiled loops of the decision path: the (couriers × bundles) passes that numpy runs as many sweeps.

Each kernel replaces a chain of numpy whole-array operations with one pass in machine code (numba),
so a 64-courier × 256-order snapshot costs tens of microseconds here instead of hundreds. Results are
bit-identical to the numpy expressions they replace (tests/test_kernels.py checks each against them,
tests/test_plan.py the plan's bundling against its Python): the loops do integer arithmetic and
comparisons, and where they compute a float (features, request checks, route costs) it is the same IEEE
operation on the same operands in the same order. Distances (``hypot``) stay in numpy, whose library
routine the compiled code would not necessarily match.

``cache=True`` keeps the compiled code next to this file (or in ``NUMBA_CACHE_DIR``), so only the first
process after an install pays the compilation (a few seconds); ``nogil=True`` lets server threads run
them side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

from dispatch.snapshot import BoolArray, IntArray

if TYPE_CHECKING:  # the decision-path modules import this one
    from dispatch.routes import Bundles, RouteTimes

log = logging.getLogger(__name__)


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with the on-disk cache where a cache folder is writable, without it elsewhere.

    numba refuses ``cache=True`` outright when it finds no writable location (a read-only image, a
    container run under another uid): compiling in each process is slower to start, not wrong.
    """

    def wrap(func: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, nogil=True, **options)(func)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            log.warning("numba cache unavailable, compiling %s in this process: %s", func.__name__, exc)
            return njit(cache=False, nogil=True, **options)(func)

    return wrap


def _call(kernel: Any, *args: Any) -> Any:
    """Run ``kernel`` on arguments of the one type each parameter is compiled for (:func:`_fixed`)."""
    return kernel(*_fixed(args))


def _fixed(args: tuple[Any, ...]) -> list[Any]:
    """Arrays as C-contiguous int64 (bool arrays stay bool) and integers as Python ints, so a caller's
    int32 column or sliced view never triggers another compilation or a wrong-layout signature.
    """
    fixed: list[Any] = []
    for a in args:
        if not isinstance(a, np.ndarray):
            fixed.append(int(a))
        elif (a.dtype == _INT64 or a.dtype == _BOOL) and a.flags.c_contiguous:
            fixed.append(a)  # the common case: already what the kernel takes, no conversion call
        else:
            fixed.append(np.ascontiguousarray(a, dtype=_BOOL if a.dtype == _BOOL else _INT64))
    return fixed


_INT64 = np.dtype(np.int64)
_BOOL = np.dtype(np.bool_)


# Columns :func:`candidate_features` writes, in dispatch.features.CANDIDATE_FEATURES order (asserted there).
CANDIDATE_COLUMNS = 16
# Rank key of an infeasible pair: after every feasible one. A feasible key is below 2**47 for any pickup
# minute a request may carry (validation caps minutes at 2**31 - 1), so this holds beyond any real day.
INFEASIBLE_KEY = np.int64(1 << 62)
# Earliest pickup of a bundle no courier can serve.
NO_PICKUP = np.int64(np.iinfo(np.int64).max)


@_compiled()
def _pair_row(
    i: int,
    travel_cr: IntArray,
    restaurant_col: IntArray,
    start: IntArray,
    off_time: IntArray,
    ready: IntArray,
    max_ctd_offset: IntArray,
    half_pickup: int,
    max_ctd_limit: int,
    none: np.int64,
    travel: IntArray,
    pickup: IntArray,
    feasible: BoolArray,
    best: IntArray,
) -> None:
    """Courier ``i``'s row of pair times into ``travel``, ``pickup`` and ``feasible``; lowers ``best``."""
    arrive = start[i] + half_pickup
    off = off_time[i]
    # The gather first, then a branch-free loop over the row the compiler can vectorise.
    for j in range(restaurant_col.shape[0]):
        travel[j] = travel_cr[i, restaurant_col[j]]
    for j in range(restaurant_col.shape[0]):
        pk = max(ready[j], arrive + travel[j])
        ok = (pk <= off) & (pk + max_ctd_offset[j] <= max_ctd_limit)
        pickup[j] = pk
        feasible[j] = ok
        best[j] = min(best[j], pk if ok else none)


@_compiled()
def _pair_times(
    travel_cr: IntArray,
    restaurant_col: IntArray,
    start: IntArray,
    off_time: IntArray,
    ready: IntArray,
    max_ctd_offset: IntArray,
    half_pickup: int,
    max_ctd_limit: int,
    none: np.int64,
) -> tuple[IntArray, BoolArray, IntArray]:
    n = start.shape[0]
    b = restaurant_col.shape[0]
    pickup = np.empty((n, b), dtype=np.int64)
    feasible = np.empty((n, b), dtype=np.bool_)
    best = np.full(b, none, dtype=np.int64)
    travel = np.empty(b, dtype=np.int64)
    for i in range(n):
        _pair_row(
            i, travel_cr, restaurant_col, start, off_time, ready, max_ctd_offset, half_pickup, max_ctd_limit,
            none, travel, pickup[i], feasible[i], best,
        )  # fmt: skip
    return pickup, feasible, best


def pair_times(
    travel_cr: IntArray,
    restaurant_col: IntArray,
    start: IntArray,
    off_time: IntArray,
    ready: IntArray,
    max_ctd_offset: IntArray,
    half_pickup: int,
    max_ctd_limit: int,
) -> tuple[IntArray, BoolArray, IntArray]:
    """Dense (couriers × bundles) pickup and feasibility in one pass, and per bundle the earliest
    feasible pickup over all couriers (int64 max where none is feasible).

    ``travel_cr`` is (couriers × restaurants) minutes and ``restaurant_col`` each bundle's column in it;
    pickup = max(ready, start + travel + half_pickup); feasible = pickup ≤ off time and pickup + the
    bundle's largest (drop-off offset − placement) ≤ the click-to-door limit. Travel and click-to-door
    per pair are not stored: each is a gather or a sum away (:class:`dispatch.routes.RouteTimes`).
    """
    return _call(
        _pair_times,
        travel_cr,
        restaurant_col,
        start,
        off_time,
        ready,
        max_ctd_offset,
        half_pickup,
        max_ctd_limit,
        NO_PICKUP,
    )  # type: ignore[no-any-return]


@_compiled()
def _rank_key(pickup: int, travel: int, size: int, feasible: bool, infeasible: int) -> int:
    """One pair's rank key (the one definition both ranking kernels use; the compiler inlines it)."""
    return (pickup * 4096 + travel) * 8 - size if feasible else infeasible


@_compiled()
def _rank_keys(
    pickup: IntArray, travel: IntArray, feasible: BoolArray, size: IntArray, infeasible: np.int64
) -> IntArray:
    n, b = pickup.shape
    key = np.empty((n, b), dtype=np.int64)
    for i in range(n):
        for j in range(b):
            key[i, j] = _rank_key(pickup[i, j], travel[i, j], size[j], feasible[i, j], infeasible)
    return key


def rank_keys(pickup: IntArray, travel: IntArray, feasible: BoolArray, size: IntArray) -> IntArray:
    """Candidate rank key per pair: earliest pickup, then shorter travel, then larger bundle; infeasible last."""
    return _call(_rank_keys, pickup, travel, feasible, size, INFEASIBLE_KEY)  # type: ignore[no-any-return]


@_compiled()
def _top_k_pairs(
    travel_cr: IntArray,
    restaurant_col: IntArray,
    start: IntArray,
    off_time: IntArray,
    ready: IntArray,
    max_ctd_offset: IntArray,
    half_pickup: int,
    max_ctd_limit: int,
    none: np.int64,
    size: IntArray,
    k: int,
    infeasible: np.int64,
) -> tuple[IntArray, BoolArray, IntArray]:
    n = start.shape[0]
    b = restaurant_col.shape[0]
    chosen = np.empty((n, k), dtype=np.int64)
    mask = np.empty((n, k), dtype=np.bool_)
    best = np.full(b, none, dtype=np.int64)
    travel = np.empty(b, dtype=np.int64)
    pickup = np.empty(b, dtype=np.int64)
    feasible = np.empty(b, dtype=np.bool_)
    row = np.empty(b, dtype=np.int64)
    keys = np.empty(k, dtype=np.int64)
    top = np.empty(k, dtype=np.int64)
    for i in range(n):
        # Per row: the pair times into row buffers (no couriers × bundles matrix is written), the rank
        # keys, then one scan that keeps the k best so far and rarely inserts.
        _pair_row(
            i, travel_cr, restaurant_col, start, off_time, ready, max_ctd_offset, half_pickup, max_ctd_limit,
            none, travel, pickup, feasible, best,
        )  # fmt: skip
        for j in range(b):
            row[j] = _rank_key(pickup[j], travel[j], size[j], feasible[j], infeasible)
        worst = infeasible
        for j in range(b):
            key = row[j]
            if j < k:
                p = j
            elif key < worst:
                p = k - 1
            else:
                continue
            # Insertion into the sorted list; strict ">" keeps the earlier bundle first among equal keys.
            while p > 0 and keys[p - 1] > key:
                keys[p] = keys[p - 1]
                top[p] = top[p - 1]
                p -= 1
            keys[p] = key
            top[p] = j
            worst = keys[k - 1]
        for p in range(k):
            chosen[i, p] = top[p]
            mask[i, p] = keys[p] != infeasible
    return chosen, mask, best


def top_k_pairs(
    travel_cr: IntArray,
    restaurant_col: IntArray,
    start: IntArray,
    off_time: IntArray,
    ready: IntArray,
    max_ctd_offset: IntArray,
    half_pickup: int,
    max_ctd_limit: int,
    size: IntArray,
    k: int,
) -> tuple[IntArray, BoolArray, IntArray]:
    """Each courier's ``k`` best bundles by :func:`rank_keys` over the pair times of :func:`pair_times`,
    computed row by row on the fly, plus each bundle's earliest feasible pickup.

    Ties in the key keep the lower bundle index first (exactly a stable sort of the whole row, cut at
    ``k``); ``k`` must be between 1 and the number of bundles. Returns (chosen, mask, best): the bundle
    index of each slot, whether that pair is feasible (infeasible pairs rank last), and per bundle
    the earliest feasible pickup over all couriers (int64 max where none is).
    """
    if not 1 <= k <= restaurant_col.shape[0]:
        raise ValueError(
            f"top_k_pairs: k must be between 1 and the number of bundles ({restaurant_col.shape[0]}), got {k}"
        )
    return _call(  # type: ignore[no-any-return]
        _top_k_pairs,
        travel_cr,
        restaurant_col,
        start,
        off_time,
        ready,
        max_ctd_offset,
        half_pickup,
        max_ctd_limit,
        NO_PICKUP,
        size,
        k,
        INFEASIBLE_KEY,
    )


@_compiled()
def _close_pairs(rest: IntArray, ready: IntArray, gap: int) -> tuple[IntArray, IntArray]:
    n = rest.shape[0]
    # nxt[a]: the next position after a with a's restaurant. Ready times never decrease along positions,
    # so the scan of a's partners stops at the first one more than ``gap`` later; walking a upwards emits
    # the pairs in row-major order with no sort. Two passes: count, then fill.
    last = np.full(rest.max() + 1, -1, dtype=np.int64)
    nxt = np.empty(n, dtype=np.int64)
    for a in range(n - 1, -1, -1):
        nxt[a] = last[rest[a]]
        last[rest[a]] = a
    total = 0
    for fill in range(2):
        if fill:
            first = np.empty(total, dtype=np.int64)
            second = np.empty(total, dtype=np.int64)
        m = 0
        for a in range(n):
            c = nxt[a]
            while c >= 0 and ready[c] - ready[a] <= gap:
                if fill:
                    first[m] = a
                    second[m] = c
                m += 1
                c = nxt[c]
        total = m
    return first[:total], second[:total]


def close_pairs(rest: IntArray, ready: IntArray, gap: int) -> tuple[IntArray, IntArray]:
    """Index pairs i < j with the same restaurant and ready times at most ``gap`` apart, in row-major order.

    ``rest`` holds restaurant indices (>= 0) and ``ready`` must be non-decreasing. Equivalent to
    ``np.nonzero(np.triu(close, 1))`` of the dense (n × n) test, in O(n + restaurants + pairs).
    """
    rest = np.asarray(rest)
    if rest.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if rest.min() < 0:  # the kernel indexes a table by restaurant
        raise ValueError(f"close_pairs: restaurant indices must be >= 0, got {rest.min()}")
    return _call(_close_pairs, rest, ready, gap)  # type: ignore[no-any-return]


@_compiled()
def _plain_columns(matrix: np.ndarray, whole_from: int, max_whole: float) -> bool:
    n, m = matrix.shape
    for i in range(n):
        for j in range(m):
            v = matrix[i, j]
            # Comparisons only, so NaN fails every test exactly as in numpy.
            if not (v >= 0.0 and v < np.inf):
                return False
            if j >= whole_from and not (v == np.floor(v) and v <= max_whole):
                return False
    return True


def plain_columns(matrix: np.ndarray, whole_from: int, max_whole: float) -> bool:
    """True when every value of the float matrix is finite and >= 0, and those of the columns from
    ``whole_from`` on are also whole and at most ``max_whole`` (a request table's common case, in one pass).
    """
    values = np.ascontiguousarray(matrix, dtype=np.float64)
    return bool(_plain_columns(values, int(whole_from), float(max_whole)))


@_compiled()
def _claim(
    rows: IntArray, slots: IntArray, bundles: IntArray, orders: IntArray, n_agents: int, n_orders: int
) -> IntArray:
    choice = np.full(n_agents, -1, dtype=np.int64)
    used = np.zeros(n_orders, dtype=np.bool_)
    left = n_agents
    width = orders.shape[1]
    for p in range(rows.shape[0]):
        i = rows[p]
        if choice[i] >= 0:
            continue
        b = bundles[p]
        free = True
        for s in range(width):
            o = orders[b, s]
            if o >= 0 and used[o]:
                free = False
                break
        if not free:
            continue
        for s in range(width):
            o = orders[b, s]
            if o >= 0:
                used[o] = True
        choice[i] = slots[p]
        left -= 1
        if left == 0:
            break
    return choice


def claim(rows: IntArray, slots: IntArray, bundles: IntArray, orders: IntArray, n_agents: int) -> IntArray:
    """Walk (agent row, slot, bundle) triples in the given order, each agent taking the first bundle none
    of whose orders is taken yet; returns each agent's slot, or -1 (wait) for an agent that took none.

    ``orders`` is the (bundles × size) order table padded with -1.
    """
    n_orders = int(orders.max()) + 1 if orders.size else 0
    return _call(_claim, rows, slots, bundles, orders, n_agents, max(n_orders, 0))  # type: ignore[no-any-return]


@_compiled()
def _agent_features(
    off_time: IntArray, on_time: IntArray, free_at: IntArray, mask: BoolArray, t: int, shared: np.ndarray
) -> np.ndarray:
    n, k = mask.shape
    width = 4 + shared.shape[0]
    out = np.empty((n, width), dtype=np.float32)
    for i in range(n):
        listed = 0
        for c in range(k):
            listed += mask[i, c]
        out[i, 0] = (off_time[i] - t) / 60.0
        out[i, 1] = (t - on_time[i]) / 60.0
        out[i, 2] = max(t - free_at[i], 0) / 10.0
        for j in range(shared.shape[0]):
            out[i, 3 + j] = shared[j]
        out[i, width - 1] = listed / max(k, 1)
    return out


def agent_features(
    off_time: IntArray, on_time: IntArray, free_at: IntArray, mask: BoolArray, t: int, shared: list[float]
) -> np.ndarray:
    """The (agents, 4 + len(shared)) agent tensor of :mod:`dispatch.features`: minutes to off-time / 60,
    on duty / 60, idle / 10, then the snapshot-wide ``shared`` values, then the share of feasible slots.

    Each value is computed in float64 exactly as the numpy expressions do, then stored as float32.
    """
    ints = _fixed((off_time, on_time, free_at, mask, t))
    return _agent_features(*ints, np.asarray(shared, dtype=np.float64))  # type: ignore[no-any-return]


@_compiled(error_model="numpy")
def _candidate_features(
    slot_bundle: IntArray,
    mask: BoolArray,
    travel_cr: IntArray,
    restaurant_col: IntArray,
    max_ctd_offset_b: IntArray,
    start_at: IntArray,
    size_b: IntArray,
    ready_b: IntArray,
    free_offset_b: IntArray,
    ctd_offset_sum_b: IntArray,
    orders_b: IntArray,
    dropoff_offset_b: IntArray,
    order_placement: IntArray,
    held_b: IntArray,
    best_pickup_b: IntArray,
    t: int,
    half_pickup: int,
    target_ctd: int,
) -> np.ndarray:
    n, k = slot_bundle.shape
    width = orders_b.shape[1]
    out = np.zeros((n, k, CANDIDATE_COLUMNS), dtype=np.float32)
    for i in range(n):
        start = float(start_at[i])
        for c in range(k):
            if not mask[i, c]:
                continue
            b = slot_bundle[i, c]
            tr = travel_cr[i, restaurant_col[b]]
            pk = max(ready_b[b], start_at[i] + half_pickup + tr)  # as pair_times computes it
            pickup = float(pk)
            travel = float(tr)
            max_ctd = float(pk + max_ctd_offset_b[b])
            size = float(size_b[b])
            free_at = pickup + free_offset_b[b]
            sum_ctd = pickup * size + ctd_offset_sum_b[b]
            ready = float(ready_b[b])
            waited = 0
            slack = np.inf
            for s in range(width):
                o = orders_b[b, s]
                if o >= 0:
                    placed = order_placement[o]
                    waited += t - placed
                    slack = min(slack, placed + target_ctd - (pickup + dropoff_offset_b[b, s]))
            since = waited / size
            arrival = start + travel + half_pickup
            route = max(free_at - t, 1.0)
            row = out[i, c]
            row[0] = travel / 10
            row[1] = max(ready - arrival, 0.0) / 10
            row[2] = (pickup - t) / 10
            row[3] = size
            row[4] = sum_ctd / size / 40.0
            row[5] = max_ctd / 40.0
            row[6] = max(max_ctd - target_ctd, 0.0) / 10
            row[7] = slack / 10
            row[8] = since / 10
            row[9] = (ready - t) / 10
            row[10] = route / 10
            row[11] = size * 6.0 / route
            row[12] = (pickup - ready) / 10
            row[13] = c / k
            row[14] = held_b[b] / 10
            row[15] = (pickup - float(best_pickup_b[b])) / 10
    return out


def candidate_features(
    slot_bundle: IntArray,
    mask: BoolArray,
    times: RouteTimes,
    bundles: Bundles,
    order_placement: IntArray,
    held: IntArray,
    best: IntArray,
    t: int,
    half_pickup: int,
    target_ctd: int,
) -> np.ndarray:
    """The (agents, K, CANDIDATE_COLUMNS) candidate tensor of :mod:`dispatch.features` (masked slots zero).

    Each value is computed in float64 from the integer minutes exactly as the feature list defines it,
    then stored as float32; ``held`` is how many agents list each bundle and ``best`` each bundle's
    earliest feasible pickup (:attr:`dispatch.routes.RouteTimes.best_pickup`).
    """
    return _call(  # type: ignore[no-any-return]
        _candidate_features,
        slot_bundle,
        mask,
        times.travel_cr,
        times.restaurant_col,
        times.max_ctd_offset,
        times.start_at,
        bundles.size,
        bundles.ready,
        times.free_offset,
        times.ctd_offset_sum,
        bundles.orders,
        bundles.dropoff_offset,
        order_placement,
        held,
        best,
        t,
        half_pickup,
        target_ctd,
    )


@_compiled()
def _pair_offsets(
    orders: IntArray, leg: IntArray, between: IntArray, leave: int, half_dropoff: int, dropoff_service: int
) -> tuple[IntArray, IntArray, IntArray]:
    n = orders.shape[0]
    out = orders.copy()
    offs = np.zeros((n, 2), dtype=np.int64)
    free = np.empty(n, dtype=np.int64)
    for b in range(n):
        a = orders[b, 0]
        c = orders[b, 1]
        first = leg[a]
        if c >= 0 and leg[c] < first:
            first = leg[c]
            out[b, 0] = c
            out[b, 1] = a
        off_a = leave + first + half_dropoff
        offs[b, 0] = off_a
        if c >= 0:
            offs[b, 1] = off_a + dropoff_service + between[b]
            free[b] = offs[b, 1] + (dropoff_service - half_dropoff)
        else:
            free[b] = off_a + (dropoff_service - half_dropoff)
    return out, offs, free


def pair_offsets(
    orders: IntArray, leg: IntArray, between: IntArray, leave: int, half_dropoff: int, dropoff_service: int
) -> tuple[IntArray, IntArray, IntArray]:
    """Drop-off sequence, offsets from pickup and free offset of singles and pairs (``orders`` is B × 2).

    A pair is served nearer-customer first (``leg`` is each order's restaurant-to-customer minutes; the
    first listed order on ties); ``between`` is each row's customer-to-customer minutes, ``leave`` the
    minutes from the pickup instant until the courier leaves the restaurant.
    """
    return _call(_pair_offsets, orders, leg, between, leave, half_dropoff, dropoff_service)  # type: ignore[no-any-return]


@_compiled()
def _bundle_stats(
    orders: IntArray, order_ready: IntArray, order_placement: IntArray, order_restaurant: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    n, width = orders.shape
    size = np.zeros(n, dtype=np.int64)
    ready = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    placement = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    restaurant = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    for b in range(n):
        for s in range(width):
            o = orders[b, s]
            if o >= 0:
                size[b] += 1
                ready[b] = max(ready[b], order_ready[o])
                placement[b] = min(placement[b], order_placement[o])
        restaurant[b] = order_restaurant[orders[b, 0]]
        last[b] = orders[b, max(size[b] - 1, 0)]
    return size, ready, placement, restaurant, last


def bundle_stats(
    orders: IntArray, order_ready: IntArray, order_placement: IntArray, order_restaurant: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Per bundle row of ``orders`` (left-packed, padded with -1): size, latest ready time, earliest
    placement, restaurant (of the first member) and last member in the drop-off sequence.

    ValueError for a row with no order (the kernel does not check its indices).
    """
    if orders.shape[0] and (orders[:, 0] < 0).any():
        raise ValueError(f"bundle {int(np.argmax(orders[:, 0] < 0))} has no orders")
    return _call(_bundle_stats, orders, order_ready, order_placement, order_restaurant)  # type: ignore[no-any-return]


@_compiled()
def _ctd_terms(
    orders: IntArray, dropoff_offset: IntArray, size: IntArray, order_placement: IntArray
) -> tuple[IntArray, IntArray, IntArray]:
    n, width = orders.shape
    rel_max = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    rel_sum = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    for b in range(n):
        for s in range(width):
            o = orders[b, s]
            if o >= 0:
                rel = dropoff_offset[b, s] - order_placement[o]
                rel_max[b] = max(rel_max[b], rel)
                rel_sum[b] += rel
        last[b] = dropoff_offset[b, max(size[b] - 1, 0)]
    return rel_max, rel_sum, last


def ctd_terms(
    orders: IntArray, dropoff_offset: IntArray, size: IntArray, order_placement: IntArray
) -> tuple[IntArray, IntArray, IntArray]:
    """Per bundle, the click-to-door terms that do not depend on the courier.

    With rel = drop-off offset − placement per member: the largest rel (max click-to-door = pickup +
    it), the summed rel (summed click-to-door = pickup × size + it) and the last member's drop-off offset.
    """
    return _call(_ctd_terms, orders, dropoff_offset, size, order_placement)  # type: ignore[no-any-return]


@_compiled()
def _cover(
    key: IntArray, feasible: BoolArray, chosen: IntArray, near: int, singles: IntArray, members: IntArray
) -> IntArray:
    n, k = chosen.shape
    n_orders = 0
    for b in range(members.shape[0]):
        for s in range(members.shape[1]):
            n_orders = max(n_orders, members[b, s] + 1)
    covered = np.zeros(n_orders, dtype=np.bool_)
    for i in range(n):
        for s in range(near):
            b = chosen[i, s]
            if feasible[i, b]:
                for m in range(members.shape[1]):
                    if members[b, m] >= 0:
                        covered[members[b, m]] = True
    out = np.full((n, k), -1, dtype=np.int64)
    fill = np.full(n, near, dtype=np.int64)
    out[:, :near] = chosen[:, :near]
    # Oldest uncovered order first: each goes to the free agent that could pick it up first.
    for b in singles:
        o = members[b, 0]
        if covered[o]:
            continue
        best = -1
        for i in range(n):
            if fill[i] < k and feasible[i, b] and (best < 0 or key[i, b] < key[best, b]):
                best = i
        if best >= 0:
            out[best, fill[best]] = b
            fill[best] += 1
            covered[o] = True
    # Cover slots left over keep the agent's next-ranked candidates; then each list is re-ranked.
    for i in range(n):
        s = near
        while fill[i] < k and s < k:
            b = chosen[i, s]
            s += 1
            taken = False
            for t in range(near, fill[i]):
                taken = taken or out[i, t] == b
            if not taken:
                out[i, fill[i]] = b
                fill[i] += 1
        row_keys = np.empty(k, dtype=np.int64)
        for t in range(k):
            row_keys[t] = key[i, out[i, t]] if out[i, t] >= 0 else INFEASIBLE_KEY + 1
        out[i] = out[i][np.argsort(row_keys, kind="mergesort")]
    return out


def cover(
    key: IntArray, feasible: BoolArray, chosen: IntArray, near: int, singles: IntArray, members: IntArray
) -> IntArray:
    """Re-fill the last ``K - near`` slots of ranked candidate lists so more open orders appear in one.

    ``chosen`` (agents × K) holds each agent's K best bundles by ``key``; ``singles`` lists the
    single-order bundles, oldest order first. An order in no agent's first ``near`` slots (alone or in
    a bundle) takes a cover slot of the feasible agent with the smallest key for it, while that agent
    has one left; cover slots nobody needs keep the agent's next-ranked candidates, so a snapshot
    where every order is already listed gets exactly ``chosen``. Each returned row is sorted by key
    (stable), -1 where a slot stays empty.
    """
    return _call(_cover, key, feasible, chosen, near, singles, members)  # type: ignore[no-any-return]


@_compiled()
def _route_cost(
    legs: IntArray, routes: IntArray, r: int, length: int, o: int, at: int, service: int, beta: float
) -> float:
    # The cost of route r with stop ``o`` placed before its position ``at`` (-1: none): minutes from the
    # restaurant plus beta × the summed drop-off delays, in the integer-then-float order of the Python
    # formulation (clock + beta * delay).
    prev = 0
    clock = 0
    delay = 0
    for p in range(length + 1):
        if p == at:
            clock += legs[prev, o] + service
            delay += clock
            prev = o
        if p == length:
            break
        stop = routes[r, p]
        clock += legs[prev, stop] + service
        delay += clock
        prev = stop
    return clock + beta * delay


@_compiled()
def _insert_stop(
    legs: IntArray,
    ready: IntArray,
    routes: IntArray,
    lengths: IntArray,
    n_routes: int,
    o: int,
    z: int,
    gap: int,
    service: int,
    beta: float,
) -> int:
    # Cheapest insertion of stop o (see bundle_pools); returns the new number of routes.
    best = np.inf
    best_r = -1
    best_pos = -1
    for r in range(n_routes):
        n = lengths[r]
        if n:
            lo = ready[o]
            hi = ready[o]
            for p in range(n):
                lo = min(lo, ready[routes[r, p]])
                hi = max(hi, ready[routes[r, p]])
            if hi - lo > gap:
                continue
        old = _route_cost(legs, routes, r, n, -1, -1, service, beta) if n else 0.0
        for pos in range(n + 1):
            new = _route_cost(legs, routes, r, n, o, pos, service, beta)
            if n >= z and n > 0 and new / (n + 1) >= old / n:
                continue
            if new - old < best:
                best = new - old
                best_r = r
                best_pos = pos
    if best_r < 0:
        routes[n_routes, 0] = o
        lengths[n_routes] = 1
        return n_routes + 1
    for p in range(lengths[best_r], best_pos, -1):
        routes[best_r, p] = routes[best_r, p - 1]
    routes[best_r, best_pos] = o
    lengths[best_r] += 1
    return n_routes


@_compiled()
def _bundle_routes(
    legs: IntArray, ready: IntArray, by_ready: IntArray, z: int, gap: int, service: int, beta: float
) -> IntArray:
    n = by_ready.shape[0]
    first = max(1, (n + z - 1) // z)
    # Each insertion opens at most one route, so 2n more rows than the first routes always suffice.
    routes = np.full((first + 2 * n, n), -1, dtype=np.int64)
    lengths = np.zeros(first + 2 * n, dtype=np.int64)
    n_routes = first
    for i in range(n):
        n_routes = _insert_stop(legs, ready, routes, lengths, n_routes, by_ready[i], z, gap, service, beta)
    for i in range(n):  # one remove-and-reinsert pass
        o = by_ready[i]
        for r in range(n_routes):
            hit = -1
            for p in range(lengths[r]):
                if routes[r, p] == o:
                    hit = p
                    break
            if hit >= 0:
                for p in range(hit, lengths[r] - 1):
                    routes[r, p] = routes[r, p + 1]
                lengths[r] -= 1
                routes[r, lengths[r]] = -1
                break
        n_routes = _insert_stop(legs, ready, routes, lengths, n_routes, o, z, gap, service, beta)
    keep = lengths[:n_routes] > 0
    return routes[:n_routes][keep]


@_compiled()
def _bundle_pools(
    legs: IntArray, starts: IntArray, ready: IntArray, by_ready: IntArray, z: int, gap: int, service: int, beta: float
) -> tuple[IntArray, IntArray]:
    # starts[0]: each pool's first stop (and the end), starts[1]: where each pool's travel matrix begins.
    stops_start, legs_start = starts[0], starts[1]
    n_pools = stops_start.shape[0] - 1
    n_orders = stops_start[n_pools] - n_pools
    width = 1
    for r in range(n_pools):
        width = max(width, stops_start[r + 1] - stops_start[r] - 1)
    # A pool of n orders ends with at most n non-empty routes.
    routes = np.full((n_orders, width), -1, dtype=np.int64)
    pool_of = np.empty(n_orders, dtype=np.int64)
    count = 0
    for r in range(n_pools):
        s0, n1 = stops_start[r], stops_start[r + 1] - stops_start[r]
        pool_legs = legs[legs_start[r] : legs_start[r] + n1 * n1].reshape((n1, n1))
        got = _bundle_routes(pool_legs, ready[s0 : s0 + n1], by_ready[s0 - r : s0 - r + n1 - 1], z, gap, service, beta)
        for i in range(got.shape[0]):
            routes[count, : got.shape[1]] = got[i]
            pool_of[count] = r
            count += 1
    return routes[:count], pool_of[:count]


def bundle_pools(
    legs: IntArray,
    legs_start: IntArray,
    ready: IntArray,
    stops_start: IntArray,
    by_ready: IntArray,
    z: int,
    gap: int,
    service: int,
    beta: float,
) -> tuple[IntArray, IntArray]:
    """Reyes et al.'s bundling (``dispatch.plan`` step 3) of many restaurants' pooled orders in one call.

    Within one pool, stop 0 is the restaurant and stops 1..n the orders' customers, with an (n+1) × (n+1)
    travel matrix in whole minutes and the stops' ready times (stop 0's unused). The orders, by ready
    time (stable), go one by one into ``max(1, ceil(n / z))`` routes at the position of least added cost
    (route minutes + ``beta`` × summed drop-off delays; ties: the first route, then the first position);
    a route whose ready times would span more than ``gap`` is skipped, and one already holding ``z``
    stops takes the order only if that lowers its cost per stop. No route will: a new one opens. One
    pass then takes each order out and inserts it again.

    Pool r's stops are ``stops_start[r] .. stops_start[r + 1] - 1`` of ``ready`` (its stop 0 first),
    its travel matrix the row-major block of ``legs`` at ``legs_start[r]``, and its orders' stops by
    ready time (stable, 1-based) the ``n_r`` entries of ``by_ready`` at ``stops_start[r] - r``. Returns
    (routes, pool): the non-empty routes, pool by pool in creation order, one a row, local stops in
    drop-off sequence padded with -1; and the pool of each row.
    """
    stops_start, legs_start, legs, ready, by_ready = (
        np.ascontiguousarray(a, dtype=np.int64) for a in (stops_start, legs_start, legs, ready, by_ready)
    )
    # The kernel indexes without bounds checks (numba), so every layout rule is checked here.
    sizes = np.diff(stops_start)
    n_pools = sizes.size
    if stops_start.ndim != 1 or n_pools < 1 or stops_start[0] != 0 or np.any(sizes < 2):
        raise ValueError(f"bundle_pools: stops_start must start at 0 and give each pool >= 2 stops, got {stops_start}")
    if not np.array_equal(legs_start, np.concatenate([[0], np.cumsum(sizes * sizes)])):
        raise ValueError("bundle_pools: legs_start must begin each pool's (n+1) x (n+1) block of legs, row-major")
    if legs.shape != (legs_start[-1],) or ready.shape != (stops_start[-1],):
        raise ValueError(f"bundle_pools: legs {legs.shape} and ready {ready.shape} do not match the starts")
    if by_ready.shape != (stops_start[-1] - n_pools,):
        raise ValueError(f"bundle_pools: by_ready {by_ready.shape} must hold one stop per order")
    pool = np.repeat(np.arange(n_pools), sizes - 1)
    if by_ready.size and (by_ready.min() < 1 or np.any(by_ready > (sizes - 1)[pool])):
        raise ValueError("bundle_pools: by_ready must list each pool's order stops, 1..n")
    if z < 1:
        raise ValueError(f"bundle_pools: z must be >= 1, got {z}")
    starts = np.stack([stops_start, legs_start])
    result: tuple[IntArray, IntArray] = _bundle_pools(
        legs, starts, ready, by_ready, int(z), int(gap), int(service), float(beta)
    )
    return result


def warm_up() -> float:
    """Compile (or load from the cache) every kernel for the argument types the decision path uses.

    Returns the seconds it took. Servers call it before they report SERVING, so no request waits for
    a compilation; ``python -m dispatch.kernels --warm`` fills the cache of a container image.
    """
    import time

    start = time.perf_counter()
    i1 = np.zeros(1, dtype=np.int64)
    i2 = np.zeros((1, 1), dtype=np.int64)
    b2 = np.ones((1, 1), dtype=np.bool_)
    _pair_times(i2, i1, i1, i1, i1, i1, 0, 0, NO_PICKUP)
    _rank_keys(i2, i2, b2, i1, INFEASIBLE_KEY)
    _top_k_pairs(i2, i1, i1, i1, i1, i1, 0, 0, NO_PICKUP, i1, 1, INFEASIBLE_KEY)
    _close_pairs(i1, i1, 0)
    _claim(i1, i1, i1, i2, 1, 1)
    _plain_columns(np.zeros((1, 1)), 0, 1.0)
    _agent_features(i1, i1, i1, b2, 0, np.zeros(1))
    _pair_offsets(np.zeros((1, 2), dtype=np.int64), i1, i1, 0, 0, 0)
    _bundle_stats(i2, i1, i1, i1)
    _ctd_terms(i2, i2, i1, i1)
    _cover(i2, b2, i2, 1, i1, i2)
    _bundle_pools(
        np.zeros(4, dtype=np.int64), np.array([[0, 2], [0, 4]]), np.zeros(2, dtype=np.int64), i1 + 1, 1, 0, 0, 0.5
    )
    _candidate_features(i2, b2, i2, i1, i1, i1, i1 + 1, i1, i1, i1, i2, i2, i1, i1, i1, 0, 0, 0)
    return time.perf_counter() - start


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dispatch.kernels", description=warm_up.__doc__)
    parser.add_argument("--warm", action="store_true", help="compile every kernel into the cache now")
    if parser.parse_args().warm:
        print(f"kernels ready in {warm_up():.1f} s")

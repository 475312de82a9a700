"""The compiled kernels of the decision path against plain numpy / Python references, bit for bit.

The references below are the whole-array formulations the kernels replaced; every snapshot here
(busy synthetic cities, tiny and empty ones, ties in ready times, couriers about to go off duty) must
give identical arrays, so features, candidates and joint actions cannot drift when the kernels change.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.serve import synthetic_snapshot
from dispatch import kernels
from dispatch.assemble import greedy, mass
from dispatch.candidates import CandidateConfig, CandidateSet, generate
from dispatch.features import CANDIDATE_FEATURES, encode
from dispatch.routes import Bundles, make_bundles, route_times
from dispatch.snapshot import Snapshot


def _snapshots() -> list[Snapshot]:
    out = [synthetic_snapshot(nc, no, seed) for nc, no, seed in ((64, 256, 0), (40, 500, 1), (7, 30, 2), (1, 1, 3))]
    # Heavy ties: few restaurants, ready times on a coarse grid, couriers going off duty soon.
    s = synthetic_snapshot(30, 120, 4)
    rng = np.random.default_rng(4)
    ready = s.order_placement + 5 * rng.integers(1, 4, s.n_orders)
    off = s.time + rng.integers(1, 40, s.n_couriers)
    rest = rng.integers(0, 3, s.n_orders)
    out.append(replace(s, order_ready=ready.astype(np.int64), courier_off_time=off, order_restaurant=rest))
    # More restaurants than bundles, most of them unused: route times over the used ones only.
    s = synthetic_snapshot(12, 20, 5)
    extra = 300
    out.append(
        replace(
            s,
            restaurant_ids=s.restaurant_ids + tuple(f"x{i}" for i in range(extra)),
            restaurant_xy=np.concatenate([s.restaurant_xy, rng.uniform(0, 10_000, (extra, 2))]),
            order_restaurant=(s.order_restaurant * 7) % len(s.restaurant_ids),
        )
    )
    return out


SNAPSHOTS = _snapshots()


def _close_pairs_reference(rest: np.ndarray, ready: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    n = rest.size
    close = (rest[:, None] == rest[None, :]) & (np.abs(ready[:, None] - ready[None, :]) <= gap)
    i, j = np.nonzero(np.triu(close, 1)) if n else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return i, j


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_close_pairs_matches_the_dense_test(snap: Snapshot) -> None:
    by_ready = np.argsort(snap.order_ready, kind="stable")
    rest, ready = snap.order_restaurant[by_ready], snap.order_ready[by_ready]
    for gap in (0, 5, 15):
        got = kernels.close_pairs(rest, ready, gap)
        want = _close_pairs_reference(rest, ready, gap)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_route_times_and_rank_keys_match_numpy(snap: Snapshot) -> None:
    agents = np.flatnonzero(snap.available()).astype(np.int64)
    bundles = make_bundles(snap, max_size=3)
    times = route_times(snap, agents, bundles)
    p = snap.params
    start = np.maximum(snap.courier_free_at[agents], snap.time)
    d = snap.restaurant_xy[bundles.restaurant][None, :, :] - snap.courier_xy[agents][:, None, :]
    travel = np.ceil(np.hypot(d[..., 0], d[..., 1]) / p.meters_per_minute).astype(np.int64)
    pickup = np.maximum(bundles.ready[None, :], start[:, None] + travel + p.half_pickup)
    valid = bundles.orders >= 0
    placement = snap.order_placement[np.where(valid, bundles.orders, 0)]
    rel = np.where(valid, bundles.dropoff_offset - placement, np.iinfo(np.int64).min).max(axis=1)
    max_ctd = pickup + rel[None, :]
    feasible = (pickup <= snap.courier_off_time[agents][:, None]) & (max_ctd <= p.max_ctd)
    assert np.array_equal(times.travel_to_restaurant, travel)
    assert np.array_equal(times.pickup, pickup)
    assert np.array_equal(times.max_ctd, max_ctd)
    assert np.array_equal(times.feasible, feasible)
    rel_all = np.where(valid, bundles.dropoff_offset - placement, 0)
    assert np.array_equal(times.ctd_offset_sum, rel_all.sum(axis=1))
    last = np.take_along_axis(bundles.dropoff_offset, np.maximum(bundles.size - 1, 0)[:, None], axis=1)[:, 0]
    assert np.array_equal(times.last_offset, last)
    key = np.where(feasible, (pickup * 4096 + travel) * 8 - bundles.size[None, :], kernels.INFEASIBLE_KEY)
    assert np.array_equal(kernels.rank_keys(pickup, travel, feasible, bundles.size), key)
    best = np.where(feasible, pickup, np.iinfo(np.int64).max).min(axis=0, initial=np.iinfo(np.int64).max)
    assert np.array_equal(times.best_pickup, best)


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_top_k_is_a_stable_sort_of_the_rank_keys_cut_at_k(snap: Snapshot) -> None:
    agents = np.flatnonzero(snap.available()).astype(np.int64)
    bundles = make_bundles(snap)
    times = route_times(snap, agents, bundles)
    key = kernels.rank_keys(times.pickup, times.travel_to_restaurant, times.feasible, bundles.size)
    ranked = np.argsort(key, axis=1, kind="stable")  # equal keys: lower bundle index first
    for k in sorted({1, 2, 16, bundles.n}):
        if k > bundles.n:
            continue
        fresh = route_times(snap, agents, bundles)  # no pair matrix built yet: the fused pass alone
        chosen, mask = fresh.top_k(k)
        assert "best_pickup" in fresh.__dict__ and "_pairs" not in fresh.__dict__  # recorded by the pass
        assert np.array_equal(fresh.best_pickup, times.best_pickup)
        assert np.array_equal(chosen, ranked[:, :k])
        assert np.array_equal(mask, np.take_along_axis(times.feasible, ranked[:, :k], axis=1))
        if k < bundles.n:  # the candidate generator's own path
            cands = generate(snap, CandidateConfig(k=k))
            assert np.array_equal(cands.bundle, np.where(mask, ranked[:, :k], -1))


def _features_reference(snapshot: Snapshot, cands: CandidateSet) -> np.ndarray:
    """The candidate tensor as whole-array numpy (the formulation before the kernel)."""
    t, p = snapshot.time, snapshot.params
    n, k = cands.bundle.shape
    tm, bun = cands.times, cands.bundles
    slot = np.where(cands.mask, cands.bundle, 0)
    rows = np.arange(n)[:, None]
    pickup = tm.pickup[rows, slot].astype(np.float64)
    travel = tm.travel_to_restaurant[rows, slot].astype(np.float64)
    start = np.broadcast_to(tm.start_at[:, None], (n, k)).astype(np.float64)
    max_ctd = tm.max_ctd[rows, slot].astype(np.float64)
    size = bun.size[slot].astype(np.float64)
    free_at = pickup + tm.free_offset[slot]
    sum_ctd = pickup * size + tm.ctd_offset_sum[slot]
    ready = bun.ready[slot].astype(np.float64)
    members = bun.orders[slot]
    valid = members >= 0
    placed = snapshot.order_placement[np.where(valid, members, 0)]
    since = np.where(valid, t - placed, 0).sum(axis=2) / size
    arrival = start + travel + p.half_pickup
    route = np.maximum(free_at - t, 1)
    slack = np.where(valid, placed + p.target_ctd - (pickup[:, :, None] + bun.dropoff_offset[slot]), np.inf).min(2)
    held = np.bincount(cands.bundle[cands.mask], minlength=bun.n)
    best = np.where(tm.feasible, tm.pickup, np.iinfo(np.int64).max).min(axis=0).astype(np.float64)
    cols = [
        travel / 10,
        np.maximum(ready - arrival, 0) / 10,
        (pickup - t) / 10,
        size,
        sum_ctd / size / 40.0,
        max_ctd / 40.0,
        np.maximum(max_ctd - p.target_ctd, 0) / 10,
        slack / 10,
        since / 10,
        (ready - t) / 10,
        route / 10,
        size * 6.0 / route,
        (pickup - ready) / 10,
        np.broadcast_to(np.arange(k)[None, :] / k, (n, k)),
        held[slot] / 10,
        (pickup - best[slot]) / 10,
    ]
    cand = np.zeros((n, k, len(CANDIDATE_FEATURES)), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # masked slots (size 0 rows) are zeroed below
        for j, col in enumerate(cols):
            cand[:, :, j] = col
    cand[~cands.mask] = 0.0
    return cand


@pytest.mark.parametrize("snap", SNAPSHOTS)
@pytest.mark.parametrize("config", [CandidateConfig(), CandidateConfig(k=4, max_bundle_size=3)])
def test_candidate_features_match_numpy_bit_for_bit(snap: Snapshot, config: CandidateConfig) -> None:
    cands = generate(snap, config)
    got = encode(snap, cands).cand
    want = _features_reference(snap, cands)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def _agent_reference(snapshot: Snapshot, cands: CandidateSet) -> np.ndarray:
    """The agent tensor as whole-array numpy (the formulation before the kernel)."""
    t, a = snapshot.time, cands.agents
    n_avail, n_open, k = int(snapshot.available().sum()), snapshot.n_orders, cands.k
    agent = np.zeros((a.size, 8), dtype=np.float32)
    agent[:, 0] = (snapshot.courier_off_time[a] - t) / 60.0
    agent[:, 1] = (t - snapshot.courier_on_time[a]) / 60.0
    agent[:, 2] = np.maximum(t - snapshot.courier_free_at[a], 0) / 10.0
    agent[:, 3] = n_open / 100.0
    agent[:, 4] = n_avail / 100.0
    agent[:, 5] = n_open / max(n_avail, 1) / 10.0
    agent[:, 6] = (t % 1440) / 1440.0
    agent[:, 7] = cands.mask.sum(axis=1) / max(k, 1)
    return agent


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_agent_features_match_numpy_bit_for_bit(snap: Snapshot) -> None:
    for config in (CandidateConfig(), CandidateConfig(k=7, lookahead=15)):
        cands = generate(snap, config)
        got = encode(snap, cands).agent
        want = _agent_reference(snap, cands)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def _claim_reference(cands: CandidateSet, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
    choice = np.full(cands.n_agents, -1, dtype=np.int64)
    used: set[int] = set()
    table = cands.bundles.orders.tolist()
    for i, c in zip(rows.tolist(), slots.tolist(), strict=True):
        b = table[int(cands.bundle[i, c])]
        if choice[i] >= 0 or not used.isdisjoint(o for o in b if o >= 0):
            continue
        used.update(o for o in b if o >= 0)
        choice[i] = c
    return choice


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_greedy_and_mass_match_their_python_walks(snap: Snapshot) -> None:
    from dispatch.assemble import MASS_THRESHOLD, _descending

    cands = generate(snap, CandidateConfig(k=8))
    n, k = cands.bundle.shape
    if not n:
        return
    scores = np.random.default_rng(1).normal(size=(n, k + 1))
    gain = np.where(cands.mask, scores[:, :k] - scores[:, k:], -np.inf)
    rows, slots = np.divmod(_descending(gain), k)
    assert np.array_equal(greedy(cands, scores).choice, _claim_reference(cands, rows, slots))
    z = np.where(np.concatenate([cands.mask, np.ones((n, 1), bool)], 1), scores, -np.inf)
    prob = np.exp(z - z.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    p = np.where(cands.mask, prob[:, :k], 0.0)
    total = np.bincount(cands.bundle[cands.mask], weights=p[cands.mask], minlength=cands.bundles.n)
    rows, slots = np.divmod(_descending(p), k)
    wanted = (total[cands.bundle[rows, slots]] >= MASS_THRESHOLD) | (prob[rows, k] <= 1.0 - MASS_THRESHOLD)
    assert np.array_equal(mass(cands, scores).choice, _claim_reference(cands, rows[wanted], slots[wanted]))


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_claim_matches_the_python_walk(snap: Snapshot) -> None:
    cands = generate(snap, CandidateConfig(k=8, max_bundle_size=3))
    rng = np.random.default_rng(0)
    rows, slots = np.nonzero(cands.mask)
    order = rng.permutation(rows.size)
    rows, slots = rows[order], slots[order]
    got = kernels.claim(rows, slots, cands.bundle[rows, slots], cands.bundles.orders, cands.n_agents)
    assert np.array_equal(got, _claim_reference(cands, rows, slots))
    # The rules built on it give conflict-free actions: no order twice.
    scores = rng.normal(size=(cands.n_agents, cands.k + 1))
    for out in (greedy(cands, scores), mass(cands, scores)):
        taken = [o for a in out.action.assignments for o in a.orders]
        assert len(taken) == len(set(taken))


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_pair_bundles_match_the_numpy_tabulation(snap: Snapshot) -> None:
    bundles = make_bundles(snap, max_size=2)
    if bundles.orders.shape[1] < 2:
        assert bundles.orders.shape[1] == 1 and np.array_equal(bundles.orders[:, 0], np.arange(snap.n_orders))
        return
    p = snap.params
    r_xy = snap.restaurant_xy[snap.order_restaurant]
    leg_all = np.ceil(np.hypot(*(snap.order_xy - r_xy).T) / p.meters_per_minute).astype(np.int64)
    orders = bundles.orders
    pair = orders[:, 1] >= 0
    leg = leg_all[np.maximum(orders, 0)]
    # The served sequence puts the nearer customer first; on equal legs the earlier ready (then lower
    # index) order, as the pair was listed.
    assert not (pair & (leg[:, 1] < leg[:, 0])).any()
    position = np.empty(snap.n_orders, dtype=np.int64)
    position[np.argsort(snap.order_ready, kind="stable")] = np.arange(snap.n_orders)
    tied = pair & (leg[:, 1] == leg[:, 0])
    assert (position[orders[tied, 0]] < position[orders[tied, 1]]).all()
    d = snap.order_xy[np.maximum(orders[:, 1], 0)] - snap.order_xy[orders[:, 0]]
    between = np.ceil(np.hypot(d[:, 0], d[:, 1]) / p.meters_per_minute).astype(np.int64)
    off_a = (p.pickup_service - p.half_pickup) + leg[:, 0] + p.half_dropoff
    off_b = np.where(pair, off_a + p.dropoff_service + between, 0)
    assert np.array_equal(bundles.dropoff_offset, np.stack([off_a, off_b], axis=1))
    free = np.where(pair, off_b, off_a) + (p.dropoff_service - p.half_dropoff)
    assert np.array_equal(bundles.free_offset, free)
    _assert_bundle_stats(snap, bundles)


def test_kernels_compile_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numba finds no writable cache folder it refuses cache=True: the kernel compiles uncached."""
    real = kernels.njit
    seen: list[bool] = []

    def njit(**options: object):  # type: ignore[no-untyped-def]
        seen.append(bool(options["cache"]))
        if options["cache"]:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'kernels.py'")
        return real(**options)

    monkeypatch.setattr(kernels, "njit", njit)

    @kernels._compiled()
    def twice(x: int) -> int:
        return 2 * x

    assert twice(21) == 42 and seen == [True, False]


@pytest.mark.parametrize("snap", SNAPSHOTS)
def test_bundle_stats_match_numpy_for_larger_bundles(snap: Snapshot) -> None:
    _assert_bundle_stats(snap, make_bundles(snap, max_size=3))


def _assert_bundle_stats(snap: Snapshot, bundles: Bundles) -> None:
    """Size, latest ready, earliest placement, restaurant and last member, as whole-array numpy."""
    orders = bundles.orders
    valid = orders >= 0
    safe = np.where(valid, orders, 0)
    assert np.array_equal(bundles.size, valid.sum(axis=1))
    assert np.array_equal(bundles.ready, np.where(valid, snap.order_ready[safe], np.iinfo(np.int64).min).max(1))
    placement = np.where(valid, snap.order_placement[safe], np.iinfo(np.int64).max).min(1)
    assert np.array_equal(bundles.placement_min, placement)
    assert np.array_equal(bundles.restaurant, snap.order_restaurant[orders[:, 0]])
    last = np.take_along_axis(orders, np.maximum(bundles.size - 1, 0)[:, None], axis=1)[:, 0]
    assert np.array_equal(bundles.last_xy, snap.order_xy[last])


def test_empty_bundle_is_refused_and_empty_snapshots_work() -> None:
    snap = SNAPSHOTS[0]
    with pytest.raises(ValueError, match="bundle 1 has no orders"):
        rows = np.array([[0, -1], [-1, -1]])
        kernels.bundle_stats(rows, snap.order_ready, snap.order_placement, snap.order_restaurant)
    none = np.zeros(0, dtype=np.int64)
    empty = replace(
        snap,
        order_ids=(),
        order_restaurant=none,
        order_xy=np.zeros((0, 2)),
        order_placement=none,
        order_ready=none,
    )
    cands = generate(empty, CandidateConfig())
    assert cands.bundles.n == 0 and not cands.mask.any()
    assert encode(empty, cands).cand.shape == (cands.n_agents, cands.k, len(CANDIDATE_FEATURES))
    assert greedy(cands, np.zeros((cands.n_agents, cands.k + 1))).action.assignments == ()


def test_plain_columns_matches_the_numpy_checks() -> None:
    rng = np.random.default_rng(7)
    tiny = np.nextafter(0.0, 1.0)  # the smallest subnormal
    specials = [np.nan, np.inf, -np.inf, -1.0, -0.0, 0.5, 2.0**31, 2.0**31 - 1, 2.0**31 - 0.5, 3.0, tiny, -tiny]
    for trial in range(300):
        m = rng.integers(0, 50, (int(rng.integers(0, 6)), 4)).astype(np.float64)
        if m.size and trial % 3:
            m.flat[int(rng.integers(0, m.size))] = specials[trial % len(specials)]
        whole_from = int(rng.integers(0, 5))
        frac = m[:, whole_from:]
        want = bool(
            np.isfinite(m).all() and (m >= 0).all() and (frac == np.floor(frac)).all() and (frac <= 2**31 - 1).all()
        )
        assert kernels.plain_columns(m, whole_from, 2**31 - 1) is want, (m, whole_from)


def test_top_k_and_close_pairs_refuse_what_they_cannot_answer() -> None:
    one, three = np.zeros(1, dtype=np.int64), np.zeros(3, dtype=np.int64)
    travel = np.zeros((1, 1), dtype=np.int64)
    # Bundles ready at 5, 3 and 4; the courier could be there at once: pickups 5, 3, 4.
    args = (travel, three, one, one + 100, np.array([5, 3, 4]), three, 0, 90, three + 1)
    assert kernels.top_k_pairs(*args, 3)[0].tolist() == [[1, 2, 0]]
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            kernels.top_k_pairs(*args, k)
    with pytest.raises(ValueError, match="restaurant indices must be >= 0"):
        kernels.close_pairs(np.array([-1, 0, -1, 0]), np.array([0, 0, 1, 1]), 5)


@pytest.mark.parametrize("snap", [s for s in SNAPSHOTS if s.n_orders > 2 and s.available().any()])
def test_the_model_path_builds_no_couriers_by_bundles_matrix(snap: Snapshot) -> None:
    """Candidates (K below the bundle count) and features read pair times row by row or at their slots."""
    cands = generate(snap, CandidateConfig(k=2))
    encode(snap, cands)
    built = set(cands.times.__dict__)
    assert "best_pickup" in built  # recorded by the top-K pass, so the features did not rebuild it
    assert not built & {"_pairs", "pickup", "feasible", "travel_to_restaurant", "max_ctd"}

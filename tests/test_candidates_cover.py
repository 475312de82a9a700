"""Order coverage of the candidate lists (``CandidateConfig.cover``) against a plain Python statement of
the rule, plus the properties a policy relies on: nothing changes where every order is listed anyway,
more orders are listed under load, and the lists stay ranked, duplicate-free and feasible."""

from __future__ import annotations

import numpy as np
import pytest

from bench.serve import synthetic_snapshot
from dispatch.candidates import CandidateConfig, CandidateSet, generate
from dispatch.kernels import INFEASIBLE_KEY, rank_keys
from dispatch.snapshot import Snapshot

# (couriers, orders, seed): many orders per courier (coverage matters), few (it should not), tiny.
SHAPES = ((64, 256, 0), (12, 200, 1), (40, 30, 2), (3, 9, 3))


def _listed(cands: CandidateSet, slots: slice = slice(None)) -> set[int]:
    out: set[int] = set()
    for i in range(cands.n_agents):
        row, mask = cands.bundle[i, slots], cands.mask[i, slots]
        for b in row[mask]:
            out.update(cands.bundles.members(int(b)))
    return out


def _reference(snap: Snapshot, config: CandidateConfig) -> list[list[int]]:
    """The cover rule as the docstring states it, one Python loop per step."""
    plain = generate(snap, CandidateConfig(config.k, config.max_bundle_size, config.max_ready_gap))
    times, bundles = plain.times, plain.bundles
    key = rank_keys(times.pickup, times.travel_to_restaurant, times.feasible, bundles.size)
    n, k = plain.bundle.shape
    if k >= bundles.n:
        return plain.bundle.tolist()
    near = k - config.cover
    # The plain ranked lists (-1: an infeasible slot); ties keep generate's order, tested elsewhere.
    ranked = plain.bundle.tolist()
    rows = [r[:near] for r in ranked]
    covered = {o for i in range(n) for b in rows[i] if b >= 0 for o in bundles.members(b)}
    singles = [b for b in range(bundles.n) if bundles.size[b] == 1]
    singles.sort(key=lambda b: bundles.placement_min[b])  # stable: ties keep bundle order
    for b in singles:
        o = bundles.members(b)[0]
        free = [i for i in range(n) if len(rows[i]) < k and times.feasible[i, b]]
        if o in covered or not free:
            continue
        best = min(free, key=lambda i: (key[i, b], i))
        rows[best].append(b)
        covered.add(o)
    out = []
    for i in range(n):
        row = rows[i] + [b for b in ranked[i][near:] if b not in rows[i][near:]][: k - len(rows[i])]
        row.sort(key=lambda b: key[i, b] if b >= 0 else INFEASIBLE_KEY)  # stable, as the kernel's mergesort
        out.append(row + [-1] * (k - len(row)))
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cover", [1, 4, 8])
def test_cover_matches_the_python_statement_of_the_rule(shape: tuple[int, int, int], cover: int) -> None:
    snap = synthetic_snapshot(*shape)
    config = CandidateConfig(k=12, cover=cover)
    got = generate(snap, config)
    assert got.bundle.tolist() == _reference(snap, config)


@pytest.mark.parametrize("shape", SHAPES)
def test_cover_lists_more_orders_and_keeps_lists_valid(shape: tuple[int, int, int]) -> None:
    snap = synthetic_snapshot(*shape)
    plain = generate(snap, CandidateConfig())
    covered = generate(snap, CandidateConfig(cover=4))
    assert _listed(covered) >= _listed(plain, slice(0, 12))
    assert len(_listed(covered)) >= len(_listed(plain))
    times = covered.times
    key = rank_keys(times.pickup, times.travel_to_restaurant, times.feasible, covered.bundles.size)
    for i in range(covered.n_agents):
        row = covered.bundle[i][covered.mask[i]]
        assert len(set(row.tolist())) == row.size, "a bundle listed twice for one courier"
        assert times.feasible[i, row].all()
        assert np.all(np.diff(key[i, row]) >= 0), "a list is no longer ranked"
        assert np.array_equal(covered.mask[i], covered.bundle[i] >= 0)


def test_cover_changes_nothing_when_every_order_is_listed() -> None:
    snap = synthetic_snapshot(100, 10, 2)  # many more couriers than orders: the plain lists hold every order
    plain = generate(snap, CandidateConfig())
    assert len(_listed(plain, slice(0, 12))) == snap.n_orders
    covered = generate(snap, CandidateConfig(cover=4))
    assert np.array_equal(plain.bundle, covered.bundle) and np.array_equal(plain.mask, covered.mask)


def test_cover_lists_every_order_under_load_when_slots_suffice() -> None:
    snap = synthetic_snapshot(64, 256, 0)
    plain = generate(snap, CandidateConfig())
    covered = generate(snap, CandidateConfig(cover=4))
    reachable = {o for o in range(snap.n_orders) if covered.times.feasible[:, o].any()}  # singles lead the rows
    assert len(_listed(plain)) < len(reachable)  # the plain lists miss orders: the case the rule is for
    assert _listed(covered) >= reachable


@pytest.mark.parametrize("cover", [-1, 16, 20])
def test_cover_out_of_range_is_refused(cover: int) -> None:
    with pytest.raises(ValueError, match="cover"):
        CandidateConfig(k=16, cover=cover)

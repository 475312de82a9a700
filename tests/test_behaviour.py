"""Behaviour policies log the exact probability of every action they take."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from dispatch.snapshot import JointAction, Snapshot
from simulator.behaviour import RECIPES, BehaviourPolicy, recipe_for_day
from simulator.engine import Engine
from simulator.heuristics import make
from simulator.instance import load

DRAWS = 1500


@pytest.fixture(scope="module")
def busy_snapshot() -> Snapshot:
    """A mid-day snapshot with several available couriers and open orders."""
    engine = Engine(load("3o50t100s1p100"))
    while True:
        snap = engine.snapshot()
        n_agents = int(snap.available().sum())
        if 4 <= n_agents <= 8 and snap.n_orders >= 4:
            return snap
        engine.step(JointAction())  # let orders pile up until the snapshot is interesting


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_empirical_frequencies_match_logged_probabilities(recipe: str, busy_snapshot: Snapshot) -> None:
    """For the first courier of each draw, P(action) is unconditional: compare it with frequencies.

    Tolerance: every (courier, action) cell with an expected count of at least 20 must lie within
    4.5 binomial standard deviations; the total mass on actions rarer than that within 4.5 sigma too.
    """
    policy = BehaviourPolicy(recipe)
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    prob: dict[tuple[int, int], float] = {}
    for draw in range(DRAWS):
        policy.reset(draw)
        d = policy.decide(busy_snapshot)
        assert d.order is not None and d.choice is not None and d.logp is not None
        first = int(d.order[0])
        courier, a = int(d.candidates.agents[first]), int(d.choice[first])  # type: ignore[union-attr]
        p = float(np.exp(d.logp[first]))
        key = (courier, a)
        if key in prob:
            assert prob[key] == pytest.approx(p, abs=1e-12)  # the same context always logs the same p
        prob[key] = p
        counts[courier][a] += 1
    checked = 0
    for courier, c in counts.items():
        n = sum(c.values())
        rare_expected, rare_seen = 0.0, 0
        for (cc, a), p in prob.items():
            if cc != courier:
                continue
            if n * p >= 20:
                sigma = np.sqrt(n * p * (1 - p))
                assert abs(c[a] - n * p) <= 4.5 * sigma + 1, (recipe, courier, a, c[a], n * p)
                checked += 1
            else:
                rare_expected += n * p
                rare_seen += c[a]
        if rare_expected >= 5:
            assert abs(rare_seen - rare_expected) <= 4.5 * np.sqrt(rare_expected) + 1
    assert checked >= 2


def test_greedy_behaviour_is_the_heuristic(busy_snapshot: Snapshot) -> None:
    for recipe, spec in RECIPES.items():
        if spec.heuristic is None:
            continue
        greedy = BehaviourPolicy(recipe, greedy=True).decide(busy_snapshot).action.to_ids(busy_snapshot)
        plain = make(spec.heuristic).decide(busy_snapshot).action.to_ids(busy_snapshot)
        assert greedy == plain


def test_random_recipe_is_uniform_over_legal_actions(busy_snapshot: Snapshot) -> None:
    policy = BehaviourPolicy("random")
    policy.reset(0)
    d = policy.decide(busy_snapshot)
    first = int(d.order[0])  # type: ignore[index]
    legal = int(d.candidates.mask[first].sum()) + 1  # type: ignore[union-attr]
    assert d.logp[first] == pytest.approx(-np.log(legal))  # type: ignore[index]


def test_mixed_recipe_follows_its_weights() -> None:
    days = [recipe_for_day("mixed", d) for d in range(100)]
    shares = Counter(days)
    assert shares["reyes-soft"] == 40 and shares["random"] == 10
    assert len(set(days[:4])) >= 3
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_for_day("bogus", 0)

"""Candidate ranking and the three joint-action assembly rules on hand-made snapshots."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from dispatch import assemble
from dispatch.candidates import CandidateConfig, CandidateSet, generate
from dispatch.snapshot import Snapshot
from simulator.engine import Engine
from tests.helpers import make_instance


def ranking_snapshot() -> Snapshot:
    # c1 at (0,250). R1 (0,0): 250 m -> 3 min; R2 (0,600): 350 m -> 4 min; R3 (0,200): 50 m -> 1 min.
    # a, b at R1 ready 10 -> pickup max(10, 3+2) = 10 (alone or together).
    # c at R2 ready 0 -> pickup max(0, 4+2) = 6.
    # d at R3 ready 10 -> pickup max(10, 1+2) = 10, travel 1.
    # e at R1 ready 80 -> pickup 80; drop 80 + 2 + 2 + 2 = 86 <= 90: feasible but ranked last;
    # f at R1 ready 95 placed 0 -> drop >= 101 > 90: infeasible (never a candidate).
    inst = make_instance(
        restaurants=[("R1", 0, 0), ("R2", 0, 600), ("R3", 0, 200)],
        orders=[
            ("a", 0, -200, 0, "R1", 10),
            ("b", 0, -200, 0, "R1", 10),
            ("c", 0, 800, 0, "R2", 0),
            ("d", 0, 0, 0, "R3", 10),
            ("e", 0, -200, 0, "R1", 80),
            ("f", 0, -200, 0, "R1", 95),
        ],
        couriers=[("c1", 0, 250, 0, 120)],
    )
    return Engine(inst).snapshot()


def labels(snap: Snapshot, cands: CandidateSet, i: int = 0) -> list[str]:
    out = []
    for c in range(cands.k):
        if cands.mask[i, c]:
            out.append("".join(snap.order_ids[o] for o in cands.bundles.members(int(cands.bundle[i, c]))))
        else:
            assert cands.bundle[i, c] == -1
            out.append("-")
    return out


def test_candidates_ranked_by_pickup_then_travel_then_larger_bundle() -> None:
    snap = ranking_snapshot()
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=2, max_ready_gap=15))
    got = labels(snap, cands)
    # Pickup 6 (c); pickup 10 with travel 1 (d); pickup 10 with travel 3: the pair before singles;
    # then e (pickup 80). f, and bundles with e or f (ready gap > 15), are absent.
    assert got[:5] == ["c", "d", "ab", "a", "b"]
    assert got[5] == "e"
    assert all(x == "-" for x in got[6:])
    assert "f" not in "".join(got)


def test_top_k_cut_keeps_the_best() -> None:
    snap = ranking_snapshot()
    cands = generate(snap, CandidateConfig(k=3, max_bundle_size=2, max_ready_gap=15))
    assert cands.k == 3
    assert labels(snap, cands) == ["c", "d", "ab"]


def pair_snapshot() -> Snapshot:
    # Two idle couriers and two orders of one restaurant.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("a", 0, -200, 0, "R1", 10), ("b", 0, -300, 0, "R1", 10)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, -250, 0, 120)],
    )
    return Engine(inst).snapshot()


def score_matrix(snap: Snapshot, cands: CandidateSet, table: dict[str, dict[str, float]]) -> np.ndarray:
    """Scores (agents, K+1) from {courier: {bundle label or 'wait': score}}; missing -> -inf."""
    s = np.full((cands.n_agents, cands.k + 1), -np.inf)
    for i, d in enumerate(cands.agents):
        row = table[snap.courier_ids[int(d)]]
        for c in range(cands.k):
            if cands.mask[i, c]:
                members = cands.bundles.members(int(cands.bundle[i, c]))
                lab = "".join(sorted(snap.order_ids[o] for o in members))
                s[i, c] = row.get(lab, -np.inf)
        s[i, cands.k] = row["wait"]
    return s


def as_ids(snap: Snapshot, out: assemble.Assembled) -> dict[str, tuple[str, ...]]:
    return {k: tuple(sorted(v)) for k, v in out.action.to_ids(snap).items()}


SINGLES = CandidateConfig(k=0, max_bundle_size=1)


def test_greedy_takes_the_highest_score_first() -> None:
    snap = pair_snapshot()
    cands = generate(snap, SINGLES)
    scores = score_matrix(snap, cands, {"c1": {"a": 6, "b": 1, "wait": 0}, "c2": {"a": 9, "b": 8, "wait": 0}})
    out = assemble.greedy(cands, scores)
    # c2 -> a (9) first; c1 then gets b (1 > wait 0). Total 10.
    assert as_ids(snap, out) == {"c2": ("a",), "c1": ("b",)}
    out.action.check(snap)


def test_assignment_maximises_the_total() -> None:
    snap = pair_snapshot()
    cands = generate(snap, SINGLES)
    scores = score_matrix(snap, cands, {"c1": {"a": 6, "b": 1, "wait": 0}, "c2": {"a": 9, "b": 8, "wait": 0}})
    out = assemble.assignment(cands, scores)
    # c1 -> a, c2 -> b: 6 + 8 = 14 beats greedy's 9 + 1 = 10.
    assert as_ids(snap, out) == {"c1": ("a",), "c2": ("b",)}
    out.action.check(snap)


@pytest.mark.parametrize("rule", assemble.ASSEMBLED)
def test_nobody_is_assigned_below_wait(rule: str) -> None:
    snap = pair_snapshot()
    cands = generate(snap, SINGLES)
    # c1 prefers waiting (7.5, P(wait) 0.96: below every rule's bar to serve) to either order; c2's a beats its wait.
    scores = score_matrix(snap, cands, {"c1": {"a": 4, "b": 3, "wait": 7.5}, "c2": {"a": 9, "b": 2, "wait": 1}})
    out = assemble.assemble(cands, scores, rule)
    assert as_ids(snap, out) == {"c2": ("a",)}
    i1 = list(cands.agents).index(snap.courier_ids.index("c1"))
    assert out.choice[i1] == assemble.WAIT


@pytest.mark.parametrize("rule", assemble.ASSEMBLED)
def test_overlapping_bundles_never_both_taken(rule: str) -> None:
    snap = pair_snapshot()
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=2))
    table = {"c1": {"ab": 10, "a": 6, "b": 1, "wait": 0}, "c2": {"ab": 2, "a": 9, "b": 8, "wait": 0}}
    out = assemble.assemble(cands, score_matrix(snap, cands, table), rule)
    out.action.check(snap)  # conflict-free
    taken = [o for v in out.action.to_ids(snap).values() for o in v]
    assert len(taken) == len(set(taken))
    assert taken  # something positive is always taken


def test_unknown_rule_is_rejected() -> None:
    snap = pair_snapshot()
    cands = generate(snap, SINGLES)
    with pytest.raises(ValueError, match="nope"):
        assemble.assemble(cands, np.zeros((cands.n_agents, cands.k + 1)), "nope")


def test_sequential_argmax_and_conditional_log_probabilities() -> None:
    snap = pair_snapshot()
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=2))
    table = {"c1": {"ab": 3, "a": 5, "b": 1.5, "wait": 1}, "c2": {"ab": 0, "a": 2, "b": 1, "wait": 0}}
    logits = score_matrix(snap, cands, table)
    i1 = list(cands.agents).index(snap.courier_ids.index("c1"))
    i2 = list(cands.agents).index(snap.courier_ids.index("c2"))
    out = assemble.sequential(cands, logits, order=np.array([i2, i1]))
    # c2 first: argmax a (2); P = e^2 / (e^2 + e^1 + e^0 + e^0).
    # c1 then: a and ab are taken, so only b (1.5) and wait (1): picks b, P = e^1.5 / (e^1.5 + e^1).
    assert as_ids(snap, out) == {"c2": ("a",), "c1": ("b",)}
    assert out.logp[i2] == pytest.approx(2 - math.log(math.e**2 + math.e + 2))
    assert out.logp[i1] == pytest.approx(1.5 - math.log(math.exp(1.5) + math.e))


def test_sequential_sampling_is_conflict_free_and_logp_matches() -> None:
    snap = pair_snapshot()
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=2))
    logits = np.zeros((cands.n_agents, cands.k + 1))
    for seed in range(30):
        out = assemble.sequential(cands, logits, order=np.array([0, 1]), rng=np.random.default_rng(seed))
        out.action.check(snap)
        # First agent: K + 1 equally likely choices (3 bundles + wait).
        assert out.logp[0] == pytest.approx(-math.log(cands.k + 1))
        assert np.all(out.logp <= 0)


def test_mass_serves_a_courier_whose_serve_probability_is_split_over_orders() -> None:
    snap = pair_snapshot()
    cands = generate(snap, SINGLES)
    assert pytest.approx(0.1) == assemble.MASS_THRESHOLD  # the numbers below are chosen around it
    # Both couriers want to work (P(serve) 0.82 each); c2 wants a a little more, c1 b: each order once.
    table = {"c1": {"a": 1.0, "b": 1.05, "wait": 0.2}, "c2": {"a": 1.1, "b": 1.0, "wait": 0.2}}
    out = assemble.mass(cands, score_matrix(snap, cands, table))
    assert as_ids(snap, out) == {"c2": ("a",), "c1": ("b",)}
    # c1 alone: P(serve) 0.13 split over two orders (0.065 each), so no bundle's summed probability
    # reaches the threshold, yet the courier's does: it takes one of them.
    lone = {"c1": {"a": 0.0, "b": 0.01, "wait": 2.6}, "c2": {"a": -20.0, "b": -20.0, "wait": 5.0}}
    out = assemble.mass(cands, score_matrix(snap, cands, lone))
    assert as_ids(snap, out) == {"c1": ("b",)}
    # P(serve) 0.057: below the threshold for the courier and for each order, so nobody moves.
    idle = {"c1": {"a": 0.0, "b": 0.0, "wait": 3.5}, "c2": {"a": -20.0, "b": -20.0, "wait": 5.0}}
    assert as_ids(snap, assemble.mass(cands, score_matrix(snap, cands, idle))) == {}


def three_courier_snapshot(n_couriers: int) -> Snapshot:
    # Orders a and b at R1 (ready 10, 10 apart at the customers: a bundle is listed); n idle couriers.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("a", 0, -200, 0, "R1", 10), ("b", 0, -300, 0, "R1", 10)],
        couriers=[("c1", 0, 250, 0, 120), ("c2", 0, -250, 0, 120), ("c3", 0, 900, 0, 120)][:n_couriers],
    )
    return Engine(inst).snapshot()


PAIRS = CandidateConfig(k=0, max_bundle_size=2)
# c1 wants a; its bundle ab has far less probability than the single (as learned policies give bundles).
C1_WANTS_A = {"a": 3.0, "b": -1.0, "ab": -2.0, "wait": 0.0}
IDLE = {"a": -20.0, "b": -20.0, "ab": -20.0, "wait": 5.0}


def test_mass_bundle_upgrades_a_single_to_its_bundle_under_load() -> None:
    snap = three_courier_snapshot(2)  # 2 open orders, 2 agents: orders are not fewer than agents
    cands = generate(snap, PAIRS)
    scores = score_matrix(snap, cands, {"c1": C1_WANTS_A, "c2": IDLE})
    assert as_ids(snap, assemble.assemble(cands, scores, "mass")) == {"c1": ("a",)}
    out = assemble.assemble(cands, scores, "mass-bundle")
    assert sorted(as_ids(snap, out)["c1"]) == ["a", "b"]
    assert set(as_ids(snap, out)) == {"c1"}
    out.action.check(snap)


def test_mass_bundle_leaves_orders_another_courier_claimed() -> None:
    snap = three_courier_snapshot(2)
    cands = generate(snap, PAIRS)
    c2_wants_b = {"a": -1.0, "b": 3.0, "ab": -2.0, "wait": 0.0}
    out = assemble.assemble(cands, score_matrix(snap, cands, {"c1": C1_WANTS_A, "c2": c2_wants_b}), "mass-bundle")
    assert as_ids(snap, out) == {"c1": ("a",), "c2": ("b",)}


def test_mass_bundle_does_not_bundle_when_couriers_outnumber_orders() -> None:
    snap = three_courier_snapshot(3)  # 2 open orders, 3 agents
    cands = generate(snap, PAIRS)
    scores = score_matrix(snap, cands, {"c1": C1_WANTS_A, "c2": IDLE, "c3": IDLE})
    assert as_ids(snap, assemble.assemble(cands, scores, "mass-bundle")) == {"c1": ("a",)}


def test_bundle_up_skips_reservations_and_keeps_what_they_hold() -> None:
    snap = three_courier_snapshot(2)
    cands = generate(snap, PAIRS)
    i1, i2 = (list(cands.agents).index(snap.courier_ids.index(c)) for c in ("c1", "c2"))

    def only_free_is(row: int | None) -> CandidateSet:  # every other agent only reserves
        return replace(cands, committable=None if row is None else np.arange(cands.n_agents) == row)

    choice = np.full(cands.n_agents, assemble.WAIT, dtype=np.int64)
    choice[i1] = labels(snap, cands, i1).index("a")
    upgraded = assemble.bundle_up(only_free_is(None), choice)
    assert labels(snap, cands, i1)[upgraded[i1]] == "ab"
    # c1 only reserves (not yet free): its pick is not executed, so it is not upgraded either.
    assert np.array_equal(assemble.bundle_up(only_free_is(i2), choice), choice)
    # c2 reserves b: c1, free, keeps its single.
    choice[i2] = labels(snap, cands, i2).index("b")
    assert np.array_equal(assemble.bundle_up(only_free_is(i1), choice), choice)


def four_order_snapshot(couriers: list[tuple[str, float, float, int, int]]) -> Snapshot:
    # Orders a-d at R1, all ready at 10: every pair of them is a listed bundle.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[(o, 0, -100 * (i + 2), 0, "R1", 10) for i, o in enumerate("abcd")],
        couriers=couriers,
    )
    return Engine(inst).snapshot()


TWO_COURIERS = [("c1", 0, 250, 0, 120), ("c2", 0, -250, 0, 120)]
# c1 wants a, c2 wants b; c2 more surely. Both could add c or d: contested companions.
CONTEST = {
    "c1": {"a": 2.0, "wait": 0.0},
    "c2": {"b": 4.0, "wait": 0.0},
}


def test_mass_bundle_hands_contested_companions_in_claim_order() -> None:
    snap = four_order_snapshot(TWO_COURIERS)
    cands = generate(snap, PAIRS)
    got = as_ids(snap, assemble.assemble(cands, score_matrix(snap, cands, CONTEST), "mass-bundle"))
    # c2 (the more probable pick) upgrades first and takes its best-ranked bundle; c1 then takes a
    # bundle with the order left over: no order twice, each bundle holds the courier's own single.
    assert "b" in got["c2"] and "a" in got["c1"] and len(got["c1"]) == len(got["c2"]) == 2
    taken = got["c1"] + got["c2"]
    assert sorted(taken) == ["a", "b", "c", "d"]
    first_for_c2 = next(lab for lab in labels(snap, cands, 1) if len(lab) == 2 and "b" in lab and "a" not in lab)
    assert sorted(got["c2"]) == sorted(first_for_c2)


def test_mass_bundle_does_not_depend_on_the_order_of_couriers() -> None:
    answers = []
    for couriers in (TWO_COURIERS, TWO_COURIERS[::-1]):
        snap = four_order_snapshot(couriers)
        cands = generate(snap, PAIRS)
        answers.append(as_ids(snap, assemble.assemble(cands, score_matrix(snap, cands, CONTEST), "mass-bundle")))
    assert answers[0] == answers[1]


def test_bundle_up_takes_the_first_listed_bundle_holding_the_single() -> None:
    snap = four_order_snapshot(TWO_COURIERS[:1])
    cands = generate(snap, PAIRS)
    lab = labels(snap, cands, 0)
    # Reorder c1's list: a bundle without a first (never taken: it would drop the courier's order), then ad, ac.
    order = [lab.index(x) for x in ("cd", "ad", "ac", "a")]
    rest = [s for s in range(cands.k) if s not in order]
    perm = np.array(order + rest)
    mine = replace(cands, bundle=cands.bundle[:, perm], mask=cands.mask[:, perm])
    choice = np.array([3])  # the single a, now in slot 3
    assert labels(snap, mine, 0)[assemble.bundle_up(mine, choice)[0]] == "ad"

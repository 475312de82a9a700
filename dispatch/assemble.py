"""Joint-action assembly: per-agent scores over K candidates (+ wait) into a conflict-free action.

Rules (part of a policy's contract, recorded in its manifest):
- ``greedy``: take (agent, candidate) pairs in descending score; a pair is taken when its agent is
  still free, none of its orders is taken, and it scores above the agent's ``wait``.
- ``assignment``: maximise the summed gain over ``wait`` with a min-cost assignment (scipy);
  overlapping bundles are resolved by dropping the weaker of two conflicting pairs and re-solving.
- ``sequential``: agents act one after another in a given order, each choosing its best remaining
  candidate (or sampling it); the log-probability of every choice, conditioned on the choices before
  it, is returned, which is what the behaviour log and InSPO's sequential update need.
- ``mass``: for policies whose scores are logits of per-courier action distributions. A pair
  (courier, bundle) may be taken when the couriers' summed probability of taking that bundle
  reaches ``MASS_THRESHOLD`` (the fleet wants it served this epoch) or when the courier's own
  probability of serving anything at all, 1 − P(wait), does (the courier wants to work); pairs go
  in descending order of probability, each courier and each order at most once. Per-courier argmax
  would serve almost nothing: when several couriers share an order, each one's probability of
  taking it is split, and when one courier has many orders, its serve probability is split over
  them, so neither a single slot nor a single bundle outweighs the courier's `wait`.
- ``mass-bundle``: ``mass``, then, when the snapshot's open orders are at least as many as the agents,
  each courier committed to a single (in the order ``mass`` claimed them) takes instead the first bundle
  of its list that holds that order and otherwise only orders nobody claimed (:func:`bundle_up`).
  Learned per-courier distributions give a bundle less probability than its own single (bundles are
  rare in the logs), so ``mass`` alone never picks one; under load a fleet that does not bundle runs
  out of couriers.

- ``plan``: the rolling-horizon plan of ``reyes`` over its own candidates, the pairs of each priority group
  ranked by the plan's value blended with the model's preference (:mod:`dispatch.plan`).

Whatever the rule, a candidate set with ``defer`` > 0 (``CandidateConfig.defer``) then turns the picks
that a courier would reach that many minutes or more before the food is ready into waits
(:func:`defer_early`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from dispatch.candidates import CandidateSet
from dispatch.kernels import claim
from dispatch.snapshot import Assignment, FloatArray, IntArray, JointAction

# The rules :func:`assemble` applies to any candidate set; ``plan`` decodes over the plan's own candidates
# instead (dispatch.plan.joint_action). RULES: every rule a manifest may name.
ASSEMBLED = ("greedy", "assignment", "sequential", "mass", "mass-bundle")
PLAN_RULE = "plan"
RULES = (*ASSEMBLED, PLAN_RULE)
WAIT = -1
# Chosen on training-seed instances (2-5), never the held-out ones: for BC on reyes logs, BC and InSPO on
# mixed logs, every value from 0.02 to 0.1 gave the same metrics within 0.1 points, and 0.2 / 0.5 lost
# more orders (BC on reyes logs: 0.84% / 1.05% / 5.94% undelivered at 0.1 / 0.2 / 0.5).
MASS_THRESHOLD = 0.1


@dataclass(frozen=True)
class Assembled:
    """A joint action plus each agent's choice (slot index, or WAIT) and its log-probability."""

    action: JointAction
    choice: IntArray
    logp: FloatArray


def to_action(cands: CandidateSet, choice: IntArray) -> JointAction:
    """The executed joint action: every agent's choice, except reservations of agents not yet free."""
    chosen = choice != WAIT
    if cands.committable is not None:
        chosen &= cands.committable
    rows = np.flatnonzero(chosen)
    if rows.size == 0:
        return JointAction()
    agents = cands.agents[rows].tolist()
    members = _members(cands, cands.bundle[rows, choice[rows]])
    return JointAction(tuple(map(Assignment, agents, members)))


def _members(cands: CandidateSet, bundles: IntArray) -> list[tuple[int, ...]]:
    """Order indices of each listed bundle, as tuples (one conversion for all, not one per bundle)."""
    # Rows are padded with -1 at the end only: each bundle's size cuts its row.
    rows = cands.bundles.orders[bundles].tolist()
    return [tuple(row[:size]) for row, size in zip(rows, cands.bundles.size[bundles].tolist(), strict=True)]


def _rows(cands: CandidateSet, bundles: IntArray) -> list[list[int]]:
    """Each listed bundle's padded row of order indices (-1 pads; :func:`_take` never records it)."""
    rows: list[list[int]] = cands.bundles.orders[bundles].tolist()
    return rows


def _take(used: set[int], row: list[int]) -> None:
    """Mark a bundle's orders as taken (``used.isdisjoint(row)`` tests a padded row as it is)."""
    used.update(row)
    used.discard(-1)


def _descending(values: FloatArray) -> IntArray:
    """Flat indices of ``values`` in descending order (stable), cut at the first non-positive or non-finite one."""
    flat = values.ravel()
    order = np.argsort(-flat, kind="stable")
    top = flat[order]
    good = (top > 0) & np.isfinite(top)
    stop = order.size if good.all() else int(np.argmin(good))
    return order[:stop]


def _slot_members(cands: CandidateSet) -> list[dict[int, list[int]]]:
    """Per agent: slot -> padded order row of each unmasked candidate (slots ascending), in one pass."""
    r, s = np.nonzero(cands.mask)
    out: list[dict[int, list[int]]] = [{} for _ in range(cands.n_agents)]
    for i, slot, row in zip(r.tolist(), s.tolist(), _rows(cands, cands.bundle[r, s]), strict=True):
        out[i][slot] = row
    return out


def greedy(cands: CandidateSet, scores: FloatArray) -> Assembled:
    """Global greedy by descending score; ``scores`` is (agents, K+1) with wait last."""
    n, k = cands.bundle.shape
    gain = scores[:, :k] - scores[:, k : k + 1]
    gain = np.where(cands.mask, gain, -np.inf)
    flat = _descending(gain)
    rows, slots = np.divmod(flat, k) if k else (flat, flat)
    choice = claim(rows, slots, cands.bundle[rows, slots], cands.bundles.orders, n)
    return Assembled(to_action(cands, choice), choice, np.zeros(n))


def assignment(cands: CandidateSet, scores: FloatArray, max_rounds: int = 20) -> Assembled:
    """Maximum total gain over ``wait`` (linear assignment), conflicts between bundles resolved."""
    n, k = cands.bundle.shape
    choice = np.full(n, WAIT, dtype=np.int64)
    if n == 0 or k == 0:
        return Assembled(JointAction(), choice, np.zeros(n))
    gain = scores[:, :k] - scores[:, k : k + 1]
    gain = np.where(cands.mask & np.isfinite(gain), gain, -np.inf)
    # Columns are distinct bundles; an agent's gain for a bundle outside its top-K is -inf.
    cols = np.unique(cands.bundle[cands.mask])
    if cols.size == 0:
        return Assembled(JointAction(), choice, np.zeros(n))
    mat = np.full((n, cols.size), -np.inf)
    slot = np.full((n, cols.size), -1, dtype=np.int64)
    ar, sl = np.nonzero(cands.mask)
    j = np.searchsorted(cols, cands.bundle[ar, sl])
    g = gain[ar, sl]
    # Should an agent list a bundle twice, its best slot (the first among equals) holds the cell.
    keep = np.lexsort((sl, -g, j, ar))
    first = np.ones(keep.size, dtype=bool)
    first[1:] = (ar[keep][1:] != ar[keep][:-1]) | (j[keep][1:] != j[keep][:-1])
    keep = keep[first & (g[keep] > -np.inf)]
    mat[ar[keep], j[keep]] = g[keep]
    slot[ar[keep], j[keep]] = sl[keep]
    banned = np.zeros(cols.size, dtype=bool)
    members = [set(m) for m in _members(cands, cols)]
    for _ in range(max_rounds):
        m = np.where(banned[None, :] | ~(mat > 0), 0.0, mat)
        # The wait option is implicit: a zero-gain pair is the same as waiting.
        rows, cs = linear_sum_assignment(m, maximize=True)
        picked = [(int(r), int(c)) for r, c in zip(rows, cs, strict=True) if m[r, c] > 0]
        conflict = None
        owner: dict[int, tuple[int, int]] = {}
        for r, c in picked:
            for o in members[c]:
                if o in owner:
                    r2, c2 = owner[o]
                    conflict = c if m[r, c] < m[r2, c2] else c2
                    break
                owner[o] = (r, c)
            if conflict is not None:
                break
        if conflict is None:
            for r, c in picked:
                choice[r] = slot[r, c]
            return Assembled(to_action(cands, choice), choice, np.zeros(n))
        banned[conflict] = True
    # Still conflicting after max_rounds: fall back to the greedy rule, which is always feasible.
    return greedy(cands, scores)


def sequential(
    cands: CandidateSet,
    logits: FloatArray,
    order: IntArray | None = None,
    rng: np.random.Generator | None = None,
) -> Assembled:
    """Agents choose one after another (``order``), masking candidates already taken.

    With ``rng`` each agent samples from the softmax of its remaining logits (wait always allowed);
    without, it takes the argmax. ``logp[i]`` is log P(choice_i | choices of agents before i).
    """
    n, k = cands.bundle.shape
    choice = np.full(n, WAIT, dtype=np.int64)
    logp = np.zeros(n)
    used: set[int] = set()
    if order is None:
        order = np.arange(n)
    slots = _slot_members(cands)
    for i in order:
        i = int(i)
        row = np.full(k + 1, -np.inf)
        mine = slots[i]
        free = [slot for slot, row in mine.items() if used.isdisjoint(row)]
        row[free] = logits[i, free]
        row[k] = logits[i, k]
        z = row - row.max()
        p = np.exp(z)
        p /= p.sum()
        c = int(rng.choice(k + 1, p=p)) if rng is not None else int(np.argmax(row))
        logp[i] = float(np.log(p[c]))
        if c < k:
            choice[i] = c
            _take(used, mine[c])
    return Assembled(to_action(cands, choice), choice, logp)


def mass(cands: CandidateSet, logits: FloatArray, threshold: float = MASS_THRESHOLD) -> Assembled:
    """Serve bundles the fleet or a courier wants (probability ≥ ``threshold``); see the module docstring."""
    choice, _ = _mass_choice(cands, logits, threshold)
    return Assembled(to_action(cands, choice), choice, np.zeros(cands.n_agents))


def _mass_choice(cands: CandidateSet, logits: FloatArray, threshold: float) -> tuple[IntArray, FloatArray]:
    """Each agent's slot (or WAIT) under the ``mass`` rule, and the probability of its choice (0 for WAIT)."""
    n, k = cands.bundle.shape
    choice = np.full(n, WAIT, dtype=np.int64)
    if n == 0 or k == 0:
        return choice, np.zeros(n)
    z = np.where(np.concatenate([cands.mask, np.ones((n, 1), bool)], 1), logits[:, : k + 1], -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    # A courier with non-finite scores (a broken model) neither serves nor counts towards any bundle.
    p = np.where(cands.mask & np.isfinite(prob[:, :k]), prob[:, :k], 0.0)
    total = np.bincount(cands.bundle[cands.mask], weights=p[cands.mask], minlength=cands.bundles.n)
    flat = _descending(p)
    rows, slots = np.divmod(flat, k)
    bundles = cands.bundle[rows, slots]
    wanted = (total[bundles] >= threshold) | (prob[rows, k] <= 1.0 - threshold)
    choice = claim(rows[wanted], slots[wanted], bundles[wanted], cands.bundles.orders, n)
    return choice, np.where(choice == WAIT, 0.0, p[np.arange(n), np.maximum(choice, 0)])


def bundle_up(cands: CandidateSet, choice: IntArray, priority: FloatArray | None = None) -> IntArray:
    """Committed singles upgraded to bundles when the open orders are at least as many as the agents.

    Agent by agent, in descending ``priority`` (ties, or no priority: row order), a committed agent whose
    choice is a single takes the first listed bundle (its best ranked) that holds the same order and
    otherwise only orders that no agent's choice, a reservation included, holds. ``mass-bundle`` passes
    each agent's probability of its choice, the order in which ``mass`` claimed them, so the answer does not
    depend on the order of the couriers in a request. Returns ``choice`` itself when nothing changes.
    """
    bundles = cands.bundles
    n = cands.n_agents
    if n == 0 or bundles.orders.shape[1] < 2 or int(np.count_nonzero(bundles.size == 1)) < n:
        return choice
    chosen = np.flatnonzero(choice != WAIT)
    rows = chosen if cands.committable is None else chosen[cands.committable[chosen]]
    rows = rows[bundles.size[cands.bundle[rows, choice[rows]]] == 1]
    if rows.size == 0:
        return choice
    if priority is not None:
        rows = rows[np.argsort(-priority[rows], kind="stable")]
    single = bundles.orders[cands.bundle[rows, choice[rows]], 0]
    listed = np.maximum(cands.bundle[rows], 0)  # (rows, K)
    members = bundles.orders[listed]  # (rows, K, S), -1 padded
    fits = cands.mask[rows] & (bundles.size[listed] >= 2) & (members == single[:, None, None]).any(axis=2)
    at, slots = np.nonzero(fits)  # courier by courier (in ``rows`` order), each one's fitting slots in list order
    if at.size == 0:
        return choice
    pairs = members[at, slots]
    companions = np.where(pairs == single[at, None], -1, pairs).tolist()
    used = set(bundles.orders[cands.bundle[chosen, choice[chosen]]].ravel().tolist())
    used.discard(-1)  # the padding
    out, done = choice, -1
    for t, slot, extra in zip(at.tolist(), slots.tolist(), companions, strict=True):
        if t == done or not used.isdisjoint(extra):
            continue
        out = choice.copy() if out is choice else out
        out[rows[t]] = slot
        _take(used, extra)
        done = t
    return out


def assemble(cands: CandidateSet, scores: FloatArray, rule: str = "greedy") -> Assembled:
    """Dispatch to the named deterministic rule, then defer early picks (``CandidateSet.defer``)."""
    if rule == "greedy":
        out = greedy(cands, scores)
    elif rule == "assignment":
        out = assignment(cands, scores)
    elif rule == "sequential":
        out = sequential(cands, scores)
    elif rule == "mass":
        out = mass(cands, scores)
    elif rule == "mass-bundle":
        choice = bundle_up(cands, *_mass_choice(cands, scores, MASS_THRESHOLD))
        out = Assembled(to_action(cands, choice), choice, np.zeros(cands.n_agents))
    elif rule == PLAN_RULE:
        raise ValueError(f"conflict rule {rule!r} needs the plan's candidates: use dispatch.plan.joint_action")
    else:
        raise ValueError(f"unknown conflict rule {rule!r}; expected one of {ASSEMBLED}")
    return with_defer(cands, out)


def with_defer(cands: CandidateSet, out: Assembled) -> Assembled:
    """``out`` with :func:`defer_early` applied (itself when the set has no ``defer`` or nothing is early).

    ``logp`` stays the rule's: a deferral is a fixed function of the pick, so for a sampled joint action it
    is still the log-probability of what was drawn.
    """
    if not cands.defer:
        return out
    choice = defer_early(cands, out.choice)
    return out if choice is out.choice else Assembled(to_action(cands, choice), choice, out.logp)


def defer_early(cands: CandidateSet, choice: IntArray) -> IntArray:
    """Picks of committable agents that would reach the restaurant ``cands.defer`` or more minutes before
    the bundle is ready, turned into waits (the assembly already kept their orders from the others).

    The agent is decided again at the next epoch, when it may still take the order, or a nearer courier
    may have come free. Returns ``choice`` itself when nothing changes.
    """
    rows = np.flatnonzero(choice != WAIT)
    if cands.committable is not None:
        rows = rows[cands.committable[rows]]
    if rows.size == 0:
        return choice
    times, bundle = cands.times, cands.bundle[rows, choice[rows]]
    arrive = times.start_at[rows] + times.travel_cr[rows, times.restaurant_col[bundle]] + times.half_pickup
    early = arrive + cands.defer <= cands.bundles.ready[bundle]
    if not early.any():
        return choice
    out = choice.copy()
    out[rows[early]] = WAIT
    return out


def sequential_mixture(
    cands: CandidateSet,
    target: IntArray,
    epsilon: float,
    order: IntArray,
    rng: np.random.Generator | None,
) -> Assembled:
    """An ε-mixture around a target joint action, sampled agent by agent in ``order``.

    Agent i's legal actions are its unmasked candidates whose orders are still free, plus wait. Its
    target is ``target[i]`` if still legal, else wait. It takes the target with probability
    ``1 - ε`` and otherwise a uniformly random legal action, so
    ``P(a) = (1 - ε)·[a = target] + ε / |legal|`` exactly; ``logp`` logs it. Without ``rng`` it
    returns the target itself (greedy mode).
    """
    n = cands.n_agents
    choice = np.full(n, WAIT, dtype=np.int64)
    logp = np.zeros(n)
    used: set[int] = set()
    slots = _slot_members(cands)
    for i in order:
        i = int(i)
        mine = slots[i]
        legal = [slot for slot, row in mine.items() if used.isdisjoint(row)]
        legal.append(WAIT)
        goal = int(target[i]) if int(target[i]) in legal else WAIT
        explore = rng is not None and epsilon > 0 and rng.random() < epsilon
        c = legal[int(rng.integers(len(legal)))] if explore and rng is not None else goal
        logp[i] = float(np.log((1 - epsilon) * (c == goal) + epsilon / len(legal)))
        choice[i] = c
        if c != WAIT:
            _take(used, mine[c])
    return Assembled(to_action(cands, choice), choice, logp)

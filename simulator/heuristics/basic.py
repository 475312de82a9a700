"""Simple dispatchers: ``random``, ``nearest`` and ``assignment``."""

from __future__ import annotations

import numpy as np

from dispatch import assemble
from dispatch.candidates import CandidateConfig, generate
from dispatch.policy import Decision
from dispatch.snapshot import Snapshot

# Every feasible single order is a candidate for these rules (no top-K cut, no bundles).
ALL_SINGLES = CandidateConfig(k=0, max_bundle_size=1)
NEVER_WAIT = -1e9


class RandomPolicy:
    """Couriers in random order each take a uniformly random feasible order (waiting only if none)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        """Reseed the choice stream."""
        self.rng = np.random.default_rng(seed)

    def decide(self, snapshot: Snapshot) -> Decision:
        """Sample a joint action."""
        cands = generate(snapshot, ALL_SINGLES)
        logits = np.zeros((cands.n_agents, cands.k + 1))
        logits[:, cands.k] = NEVER_WAIT
        order = self.rng.permutation(cands.n_agents)
        out = assemble.sequential(cands, logits, order=order, rng=self.rng)
        return Decision(out.action, cands, out.choice, out.logp)


class NearestPolicy:
    """Open orders by earliest ready time, each to the nearest free courier (travel to restaurant)."""

    name = "nearest"

    def reset(self, seed: int) -> None:
        """Deterministic: nothing to seed."""

    def decide(self, snapshot: Snapshot) -> Decision:
        """Greedy over (ready time, travel) with every courier busy as soon as an order is open."""
        cands = generate(snapshot, ALL_SINGLES)
        ready = cands.take(np.broadcast_to(cands.bundles.ready, cands.times.pickup.shape))
        travel = cands.take(cands.times.travel_to_restaurant)
        scores = np.full((cands.n_agents, cands.k + 1), NEVER_WAIT)
        # Lexicographic: earlier ready first, then shorter travel.
        scores[:, : cands.k] = -(ready.astype(np.float64) * 1e4 + travel)
        out = assemble.greedy(cands, scores)
        return Decision(out.action, cands, out.choice, out.logp)


class AssignmentPolicy:
    """Each epoch, a min-cost assignment of open orders to free couriers by predicted click-to-door."""

    name = "assignment"

    def reset(self, seed: int) -> None:
        """Deterministic: nothing to seed."""

    def decide(self, snapshot: Snapshot) -> Decision:
        """Maximise the number of orders served, then minimise their summed click-to-door."""
        cands = generate(snapshot, ALL_SINGLES)
        ctd = cands.take(cands.times.sum_ctd).astype(np.float64)
        scores = np.zeros((cands.n_agents, cands.k + 1))
        scores[:, : cands.k] = 1e4 - ctd
        out = assemble.assignment(cands, scores)
        return Decision(out.action, cands, out.choice, out.logp)

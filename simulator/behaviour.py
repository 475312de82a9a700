"""Behaviour policies: stochastic heuristics with an exact probability for every logged action.

A behaviour policy wraps a heuristic. Each epoch the heuristic proposes its joint action; the
behaviour policy builds the standard candidate set (``CandidateConfig``), makes sure each proposed
bundle is among its courier's candidates, then lets the available couriers act one after another in
a random order, each following an ε-mixture around the proposal
(:func:`dispatch.assemble.sequential_mixture`): P(a) = (1 − ε)·[a = proposal] + ε / |legal actions|.
The logged probability of a courier's action is therefore exact and conditioned on the couriers
before it, which is what importance weights and InSPO's sequential update need.

Recipes name (heuristic, ε) pairs, in the spirit of OG-MARL's dataset tiers; ``mixed`` gives each
day one recipe, in the proportions of ``MIXED_WEIGHTS`` (real fleets change dispatch rules over time, so real logs are
multi-modal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch import assemble
from dispatch.candidates import CandidateConfig, force, generate, with_bundles
from dispatch.policy import Decision, Policy
from dispatch.snapshot import Snapshot
from simulator.heuristics import make

BEHAVIOUR_STREAM = 0xB0


@dataclass(frozen=True, slots=True)
class Recipe:
    """A behaviour policy: the heuristic it follows (None: none) and its exploration rate ε."""

    heuristic: str | None
    epsilon: float


RECIPES: dict[str, Recipe] = {
    "reyes-soft": Recipe("reyes", 0.03),
    "assignment-soft": Recipe("assignment", 0.05),
    "nearest-noisy": Recipe("nearest", 0.10),
    "random": Recipe(None, 1.0),
}
MIXED_WEIGHTS: dict[str, float] = {"reyes-soft": 0.4, "assignment-soft": 0.25, "nearest-noisy": 0.25, "random": 0.1}
RECIPE_NAMES = (*RECIPES, "mixed")


def recipe_for_day(recipe: str, day: int) -> str:
    """The concrete recipe of one day; ``mixed`` follows MIXED_WEIGHTS by smooth weighted round robin.

    Day d of ``mixed`` goes to the recipe furthest behind its share after d days, so every prefix of
    the days holds each recipe in proportion to its weight (even a 4-day demo set is multi-modal).
    """
    if recipe in RECIPES:
        return recipe
    if recipe != "mixed":
        raise ValueError(f"unknown recipe {recipe!r}; recipes are {', '.join(RECIPE_NAMES)}")
    names = list(MIXED_WEIGHTS)
    weights = np.array([MIXED_WEIGHTS[n] for n in names])
    weights = weights / weights.sum()
    counts = np.zeros(len(names))
    pick = 0
    for d in range(day + 1):
        pick = int(np.argmax(weights * (d + 1) - counts))
        counts[pick] += 1
    return names[pick]


class BehaviourPolicy:
    """A heuristic made stochastic by a per-courier ε-mixture, with exact logged probabilities."""

    def __init__(self, recipe: str, candidates: CandidateConfig | None = None, greedy: bool = False) -> None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; recipes are {', '.join(RECIPES)}")
        self.recipe = RECIPES[recipe]
        self.name = recipe
        self.base: Policy | None = make(self.recipe.heuristic) if self.recipe.heuristic else None
        self.candidates = candidates or CandidateConfig()
        self.greedy = greedy
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        """Seed the behaviour stream (its own stream, apart from the heuristic's)."""
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, BEHAVIOUR_STREAM]))
        if self.base is not None:
            self.base.reset(seed)

    def decide(self, snapshot: Snapshot) -> Decision:
        """Sample a joint action around the heuristic's proposal."""
        base = self.base.decide(snapshot) if self.base is not None else None
        proposal = base.action.assignments if base is not None else ()
        # With a lookahead, couriers not free yet are agents too: their target is what the heuristic
        # holds for them (a reservation), else wait.
        held = base.reservations if base is not None and self.candidates.lookahead else ()
        bundles, rows = with_bundles(snapshot, [a.orders for a in (*proposal, *held)], self.candidates)
        cands = generate(snapshot, self.candidates, bundles=bundles)
        target = np.full(cands.n_agents, assemble.WAIT, dtype=np.int64)
        agent_row = {int(c): i for i, c in enumerate(cands.agents)}
        for a, b in zip((*proposal, *held), rows, strict=True):
            i = agent_row.get(a.courier, -1)
            if i >= 0:  # a held courier beyond the lookahead is no agent
                target[i] = force(cands, i, int(b))
        order = self.rng.permutation(cands.n_agents)
        out = assemble.sequential_mixture(cands, target, self.recipe.epsilon, order, None if self.greedy else self.rng)
        return Decision(out.action, cands, out.choice, out.logp, order)

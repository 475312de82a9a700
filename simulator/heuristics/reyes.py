"""``reyes``: a re-implementation of the Reyes et al. (2018) rolling-horizon MDRP heuristic.

The plan itself (pool, bundling, priority groups, values, commitment) lives in :mod:`dispatch.plan`,
which the ``plan`` conflict rule of exported models shares; this policy runs it with the plan's own
values. The assignment goes through the shared decision path: bundles become the candidate set
(:func:`dispatch.candidates.generate`), values become scores, and :func:`dispatch.assemble.assignment`
turns them into a conflict-free joint action.
"""

from __future__ import annotations

import numpy as np

from dispatch.plan import PlanParams, execute, make_plan, plan_scores
from dispatch.policy import Decision
from dispatch.snapshot import JointAction, Snapshot

ReyesParams = PlanParams  # the heuristic's parameters are the plan's


class ReyesPolicy:
    """The rolling-horizon bundling + assignment + commitment heuristic."""

    name = "reyes"

    def __init__(self, params: ReyesParams | None = None, **overrides: float) -> None:
        base = params or ReyesParams()
        if overrides:
            fields = {k: type(getattr(base, k))(v) for k, v in overrides.items()}
            base = ReyesParams(**{**{f: getattr(base, f) for f in base.__slots__}, **fields})
        self.params = base

    def reset(self, seed: int) -> None:
        """Deterministic: nothing to seed."""

    def decide(self, snapshot: Snapshot) -> Decision:
        """Bundle, prioritise, assign, then commit the pairs that should not wait."""
        plan = make_plan(snapshot, self.params)
        if plan is None:
            return Decision(JointAction())
        out, held = execute(plan, plan_scores(plan))
        return Decision(out.action, plan.cands, out.choice, np.zeros(plan.cands.n_agents), reservations=held)

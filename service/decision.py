"""The service's side of the shared decision path: candidates → features → (batched) scores → joint action.

Every step calls ``dispatch`` (the code the simulator and OnnxPolicy run); this module only splits
the path where the micro-batcher sits between encoding and assembly, and adds the fallback scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch.assemble import WAIT, Assembled
from dispatch.candidates import CandidateConfig, CandidateSet
from dispatch.features import Encoded, encode
from dispatch.plan import Plan, candidates_for, joint_action
from dispatch.snapshot import FloatArray, Snapshot
from service.gen.dispatch.v1 import dispatch_pb2 as pb

FALLBACK_RULE = "greedy"
_FALLBACK_WAIT = -1e6


@dataclass(frozen=True)
class Prepared:
    """A snapshot's candidates and model inputs (``encoded`` is None when no courier can act)."""

    snapshot: Snapshot
    cands: CandidateSet
    encoded: Encoded | None
    plan: Plan | None = None  # the epoch's plan, under the ``plan`` conflict rule


def prepare(snapshot: Snapshot, config: CandidateConfig, rule: str) -> Prepared:
    """Candidates and features exactly as OnnxPolicy builds them for a model with this config and rule."""
    cands, plan = candidates_for(snapshot, config, rule)
    return Prepared(snapshot, cands, encode(snapshot, cands) if cands.n_agents else None, plan)


def model_scores(cands: CandidateSet, logits: np.ndarray, k: int) -> FloatArray:
    """(agents, K+1) scores from a model's masked logits row block (wait last), as OnnxPolicy.decide slices them.

    ValueError when a score is NaN or infinite (masked slots hold a large finite value): the assembly
    rules would quietly make such couriers wait, so the caller answers with the flagged fallback.
    """
    rows = logits[: cands.n_agents]
    scores = np.concatenate([rows[:, : cands.k], rows[:, k : k + 1]], axis=1)
    if not np.isfinite(scores).all():
        raise ValueError("model returned NaN or infinite scores")
    return scores


def fallback_scores(prepared: Prepared) -> FloatArray:
    """Earliest-pickup heuristic: score = -(minutes until pickup); waiting only when nothing is feasible, or
    when the model's ``defer`` holds a pick the courier would reach too early (the fallback shares its
    candidate set and :func:`dispatch.assemble.assemble`)."""
    cands = prepared.cands
    pickup = cands.take(cands.times.pickup).astype(np.float64) - prepared.snapshot.time
    scores = np.where(cands.mask, -pickup, -np.inf)
    wait = np.full((cands.n_agents, 1), _FALLBACK_WAIT)
    return np.concatenate([scores, wait], axis=1)


def finish(prepared: Prepared, scores: FloatArray, rule: str) -> Assembled:
    """The conflict-free joint action for ``scores`` under the named rule (dispatch.assemble)."""
    return joint_action(prepared.cands, prepared.plan, scores, rule)


def build_response(
    prepared: Prepared,
    assembled: Assembled | None,
    scores: FloatArray | None,
    include_scores: bool,
) -> pb.DecideResponse:
    """Per-courier actions in request order (everyone not assigned waits)."""
    snap = prepared.snapshot
    orders_of: dict[int, tuple[int, ...]] = {}
    if assembled is not None:
        orders_of = {a.courier: a.orders for a in assembled.action.assignments}
    scored = include_scores and scores is not None and assembled is not None
    agent_row: dict[int, int] = {}
    if scored:
        cands = prepared.cands
        # Couriers not yet free (a lookahead model's reservations) cannot act: no scores, as the proto says.
        can_act = cands.committable
        agent_row = {int(c): i for i, c in enumerate(cands.agents) if can_act is None or can_act[i]}
    k = prepared.cands.k
    response = pb.DecideResponse()
    add = response.actions.add
    for ci, cid in enumerate(snap.courier_ids):
        mine = orders_of.get(ci)
        # add() then attribute sets: several times cheaper than building each message, and a quarter
        # cheaper than add() with keyword arguments.
        act = add()
        act.courier_id = cid
        if mine:
            act.order_ids.extend([snap.order_ids[o] for o in mine])
        else:
            act.wait = True
        row = agent_row.get(ci)
        if row is not None:
            assert scores is not None and assembled is not None
            c = int(assembled.choice[row])
            act.score = float(scores[row, k] if c == WAIT else scores[row, c])
            act.wait_score = float(scores[row, k])
    return response

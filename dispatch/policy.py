"""The policy contract every dispatcher fulfils: a snapshot in, a decision out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dispatch.candidates import CandidateSet
from dispatch.snapshot import Assignment, FloatArray, IntArray, JointAction, Snapshot


@dataclass(frozen=True)
class Decision:
    """A joint action, plus (when the policy works over candidates) each agent's choice and log-prob.

    ``choice[i]`` is agent i's candidate slot or -1 for wait; ``logp[i]`` the log-probability the
    policy gave that choice (0 for a deterministic policy), conditioned on the choices of the agents
    before it in ``order`` (the sequence in which agents chose; None when they chose jointly).
    ``reservations``: pairs a planning heuristic (reyes) holds this epoch for couriers not free yet;
    never executed, but a behaviour policy logs them as those couriers' actions when they are agents
    (``CandidateConfig.lookahead``).
    """

    action: JointAction
    candidates: CandidateSet | None = None
    choice: IntArray | None = None
    logp: FloatArray | None = None
    order: IntArray | None = None
    reservations: tuple[Assignment, ...] = ()


class Policy(Protocol):
    """A dispatcher: heuristic, ONNX model or remote endpoint."""

    name: str

    def reset(self, seed: int) -> None:
        """Start a new day; seeds any internal randomness."""

    def decide(self, snapshot: Snapshot) -> Decision:
        """The joint action for one decision epoch."""
        ...

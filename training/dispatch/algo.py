"""BC and InSPO for dispatch: the algorithms of ``training/algos`` with the dispatch networks.

The update rules are exactly those of :mod:`training.algos.bc` and :mod:`training.algos.inspo` (shared
parameters, the permutation + prefix-ratio form of InSPO); only the networks differ: the policy, μ̂
and the local critic are :class:`~training.dispatch.nets.Scorer` heads over (courier, candidate)
features, the critics are set networks over a varying number of couriers. Observations and states
are dicts of padded tensors (see :mod:`training.dispatch.batches`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.algos import config_class
from training.algos.base import Algorithm, DataInfo
from training.algos.bc import BC, BCConfig
from training.algos.inspo import InSPO, InSPOConfig
from training.dispatch.nets import Scorer, SetQ, SetV
from training.nets import masked_log_softmax

DISPATCH_ALGOS = ("bc", "inspo")


class PolicyHead(nn.Module):
    """π(a | s) over each courier's candidates and wait: masked log-softmax of a Scorer."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.scorer = Scorer(hidden)

    def forward(self, obs: dict[str, torch.Tensor], legal: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [B, N, K + 1]."""
        return masked_log_softmax(self.scorer(obs["agent"], obs["cand"], obs["cand_mask"]), legal)


class LocalHead(nn.Module):
    """The local critic q(s, a^i) over each courier's candidates and wait."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.scorer = Scorer(hidden)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values [B, N, K + 1] (illegal candidates carry a large negative value, never used)."""
        return self.scorer(obs["agent"], obs["cand"], obs["cand_mask"])


class DispatchBC(BC):
    """Behaviour cloning of logged courier actions with the shared dispatch scorer."""

    def __init__(self, config: BCConfig, info: DataInfo, generator: torch.Generator) -> None:
        Algorithm.__init__(self, config, info, generator)
        self.pi = PolicyHead(config.hidden)  # type: ignore[assignment]
        self.modules = {"pi": self.pi}
        self.optims = {"pi": torch.optim.Adam(self.pi.parameters(), lr=config.lr)}


class DispatchInSPO(InSPO):
    """InSPO with parameter sharing across couriers (its permutation form) and set critics."""

    def __init__(self, config: InSPOConfig, info: DataInfo, generator: torch.Generator) -> None:
        Algorithm.__init__(self, config, info, generator)
        config.shared = True  # couriers are interchangeable: the permutation form of the update
        h = config.hidden
        self._install(PolicyHead(h), PolicyHead(h), LocalHead(h), SetQ(info.state_dim, h), SetV(info.state_dim, h))  # type: ignore[arg-type]


def make(name: str, params: dict[str, Any], info: DataInfo, generator: torch.Generator) -> Algorithm:
    """A dispatch algorithm by name with config overrides (unknown keys and bad values are a ValueError)."""
    if name in DISPATCH_ALGOS:
        known = set(config_class(name).__dataclass_fields__)
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"{name}: unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    if name == "bc":
        cfg_bc = BCConfig(**{"shared": True, **params})
        return DispatchBC(cfg_bc, info, generator)
    if name == "inspo":
        # No support cut (docs/inspo.md, A7): μ̂ is mostly `wait` here, and the serve actions that carry the
        # signal sit below any threshold relative to its mode.
        # α = 1: with the lookahead decoder it served more orders, sooner, than the games' 0.05 on training-seed
        # instances (docs/dispatch-experiments.md §6); the smaller α drifts to far, early commitments.
        # Constant β = 0.05 and marginal ratios, as every dispatch figure was measured: the conditional behaviour model
        # (A9/A10) exists for the heterogeneous two-agent form only, and the entropy annealing (A11) was made for the
        # games' equilibrium selection and never tried here.
        defaults = {
            "shared": True,
            "support_threshold": 0.0,
            "alpha": 1.0,
            "beta": 0.05,
            "conditional_behaviour": False,
            "teammate_expectation": False,
            "beta_anneal_steps": 0,
        }
        cfg = InSPOConfig(**{**defaults, **params})
        return DispatchInSPO(cfg, info, generator)
    raise ValueError(f"unknown dispatch algorithm {name!r}; known: {', '.join(DISPATCH_ALGOS)}")


def scorer_of(algo: Algorithm) -> Scorer:
    """The policy's scorer, for export."""
    head = algo.modules["pi"]
    assert isinstance(head, PolicyHead)
    return head.scorer

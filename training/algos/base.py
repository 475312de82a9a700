"""What every algorithm provides to the harness: an update on a batch, a policy, and its state."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class DataInfo:
    """Sizes and constants of the dataset an algorithm trains on."""

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    gamma: float


Batch = dict[str, Any]


class Algorithm:
    """Base class: subclasses fill ``modules``/``optims`` and implement ``update``/``log_probs``."""

    name = "base"

    def __init__(self, config: Any, info: DataInfo, generator: torch.Generator) -> None:
        self.config = config
        self.info = info
        self.generator = generator  # the harness's seeded stream; saved in checkpoints
        self.modules: dict[str, nn.Module] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """One gradient step on a minibatch; returns scalar diagnostics."""
        raise NotImplementedError

    def log_probs(self, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [B, N, A] of the learned decentralised policy."""
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict."""
        return asdict(self.config)

    def state_dict(self) -> dict[str, Any]:
        """Networks and optimisers (RNG streams are saved by the harness)."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is true (0 if none)."""
    m = mask.float()
    return (x * m).sum() / m.sum().clamp_min(1.0)


def td_target(reward: torch.Tensor, gamma: float, terminated: torch.Tensor, next_value: torch.Tensor) -> torch.Tensor:
    """r + γ·(1 − terminated)·V(s'): a terminated step has no future; a truncated one bootstraps."""
    return reward + gamma * (~terminated).float() * next_value


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric squared loss |e − 1(u < 0)|·u² per element, u = Q − V."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)

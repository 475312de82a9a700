"""Behaviour cloning: each agent fits its logged actions by maximum likelihood.

    L(θ) = −E_{(o, a) ~ D} Σ_i log π_θ^i(a^i | o^i)          (illegal actions masked out)

Also the behaviour-policy estimator μ̂ that InSPO needs. Each agent fits its own marginal, so on data with
several coordinated modes it averages them: that is the failure the benchmark games expose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.algos.base import Algorithm, Batch, DataInfo, check_config, masked_mean
from training.nets import Policy, gather_actions


@dataclass
class BCConfig:
    """Behaviour cloning hyperparameters."""

    lr: float = 1e-3
    hidden: int = 64
    shared: bool = False

    def __post_init__(self) -> None:
        check_config(self, positive=("lr", "hidden"))


class BC(Algorithm):
    """Per-agent behaviour cloning."""

    name = "bc"

    def __init__(self, config: BCConfig, info: DataInfo, generator: torch.Generator) -> None:
        super().__init__(config, info, generator)
        self.pi = Policy(info.n_agents, info.obs_dim, info.n_actions, config.hidden, config.shared)
        self.modules = {"pi": self.pi}
        self.optims = {"pi": torch.optim.Adam(self.pi.parameters(), lr=config.lr)}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        logp = gather_actions(self.pi(batch["obs"], batch["legal"]), batch["actions"])
        loss = -masked_mean(logp, batch["agent_mask"])  # L(θ)
        self.optims["pi"].zero_grad(set_to_none=True)
        loss.backward()
        self.optims["pi"].step()
        return {"bc_loss": loss.item()}

    def log_probs(self, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        return self.pi(obs, legal)

"""OMIGA: Offline MARL with Implicit Global-to-local value regularisation (Wang et al., NeurIPS 2023).

Global objective: max E[Σ γ^t (r − α·log(π/μ))]. With the decomposition
    Q_tot(s, a) = Σ_i w_i(s)·Q_i(o^i, a^i) + b(s),   V_tot(s) = Σ_i w_i(s)·V_i(o^i) + b(s),   w_i ≥ 0
the global regularised optimum is reached by local, in-sample updates:
    L_Q = E[ (r + γ(1 − d)·V_tot(s') − Q_tot(s, a))² ]  [critic]
    L_V = E[ Σ_i exp( w_i(s)·(Q_i − V_i)/α ) + w_i(s)·V_i/α ]     (Q_i, w_i held fixed)  [value]
          at the optimum V_i = (α/w_i)·log E_μ[exp(w_i Q_i/α)], an in-sample soft value
    L_π = −E[ exp( w_i(s)·(Q_i(o^i, a^i) − V_i(o^i))/α ) · log π_i(a^i | o^i) ]  [actor]
Exponents are clipped for numerical stability (as in IQL-style implementations).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from training.algos.base import Algorithm, Batch, DataInfo, check_config, masked_mean, td_target
from training.nets import LinearMixer, PerAgent, Policy, gather_actions, polyak


@dataclass
class OMIGAConfig:
    """OMIGA hyperparameters (rewards arrive scaled to max |r| = 1)."""

    alpha: float = 0.1
    max_exponent: float = 5.0
    lr: float = 1e-3
    critic_lr: float = 1e-3
    polyak: float = 0.005
    hidden: int = 64
    critic_hidden: int = 256  # same critic width as InSPO's
    shared: bool = False

    def __post_init__(self) -> None:
        # alpha divides (the weight's temperature), so 0 is refused too.
        check_config(
            self,
            positive=("alpha", "lr", "critic_lr", "hidden", "critic_hidden"),
            unit_half_open=("polyak",),
        )


class OMIGA(Algorithm):
    """OMIGA for discrete actions."""

    name = "omiga"

    def __init__(self, config: OMIGAConfig, info: DataInfo, generator: torch.Generator) -> None:
        super().__init__(config, info, generator)
        n, o, a, h, ch = info.n_agents, info.obs_dim, info.n_actions, config.hidden, config.critic_hidden
        self.pi = Policy(n, o, a, h, config.shared)
        self.qi = PerAgent(n, o, a, ch, config.shared)
        self.vi = PerAgent(n, o, 1, ch, config.shared)
        self.mixer = LinearMixer(info.state_dim, n, ch)
        self.mixer_targ = copy.deepcopy(self.mixer)
        self.modules = {
            "pi": self.pi,
            "qi": self.qi,
            "vi": self.vi,
            "mixer": self.mixer,
            "mixer_targ": self.mixer_targ,
        }
        self.optims = {
            "pi": torch.optim.Adam(self.pi.parameters(), lr=config.lr),
            "critic": torch.optim.Adam([*self.qi.parameters(), *self.mixer.parameters()], lr=config.critic_lr),
            "value": torch.optim.Adam(self.vi.parameters(), lr=config.critic_lr),
        }

    def update(self, b: Batch, step: int) -> dict[str, float]:
        cfg, mask = self.config, b["agent_mask"]
        with torch.no_grad():
            v_next = self.mixer_targ(b["next_state"], self.vi(b["next_obs"]).squeeze(-1), b["next_agent_mask"])
            y = td_target(b["rewards"], self.info.gamma, b["terminated"], v_next)
        q_i = gather_actions(self.qi(b["obs"]), b["actions"])
        critic_loss = (self.mixer(b["state"], q_i, mask) - y).pow(2).mean()
        self.optims["critic"].zero_grad(set_to_none=True)
        critic_loss.backward()
        self.optims["critic"].step()
        polyak(self.mixer_targ, self.mixer, cfg.polyak)

        with torch.no_grad():
            w = self.mixer.weights(b["state"])
            q_i = gather_actions(self.qi(b["obs"]), b["actions"])
        v_i = self.vi(b["obs"]).squeeze(-1)
        expo = (w * (q_i - v_i) / cfg.alpha).clamp(max=cfg.max_exponent)
        value_loss = masked_mean(expo.exp() + w * v_i / cfg.alpha, mask)
        self.optims["value"].zero_grad(set_to_none=True)
        value_loss.backward()
        self.optims["value"].step()

        with torch.no_grad():
            weight = (w * (q_i - v_i.detach()) / cfg.alpha).clamp(max=cfg.max_exponent).exp()
        logp = gather_actions(self.pi(b["obs"], b["legal"]), b["actions"])
        actor_loss = -masked_mean(weight * logp, mask)
        self.optims["pi"].zero_grad(set_to_none=True)
        actor_loss.backward()
        self.optims["pi"].step()
        return {
            "critic_loss": critic_loss.item(),
            "value_loss": value_loss.item(),
            "actor_loss": actor_loss.item(),
        }

    def log_probs(self, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        return self.pi(obs, legal)

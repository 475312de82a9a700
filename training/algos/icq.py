"""ICQ: Implicit Constraint Q-learning for offline MARL (Yang et al., NeurIPS 2021), ICQ-MA, discrete.

Value decomposition with a linear non-negative mixer:
    Q_tot(s, a) = Σ_i w_i(s)·Q_i(o^i, a^i) + b(s),   w_i ≥ 0  [LinearMixer]
Implicit constraint: under KL(π || μ) ≤ ε the optimal policy is π* ∝ μ·exp(Q/α), so the Bellman target
uses only the dataset's next joint action a', reweighted in-sample (Z estimated over the minibatch):
    y = r + γ(1 − d)·[ exp(Q̄_tot(s', a')/α) / Z ]·Q̄_tot(s', a'),   Z = mean_batch exp(Q̄_tot/α)  [critic]
Actor, per agent, advantage-weighted with the mixer weight:
    A_i = w_i(s)·( Q_i(o^i, a^i) − Σ_b π_i(b | o^i)·Q_i(o^i, b) )
    L_π = −E[ exp(A_i/β)/Z_i · log π_i(a^i | o^i) ],   Z_i = mean_batch exp(A_i/β)                     [actor]
One-step targets instead of the paper's TD(λ); at an episode's last step (no logged next action) the
target bootstraps from the policy's own expectation Σ_i w_i Σ_b π_i Q̄_i + b.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from training.algos.base import Algorithm, Batch, DataInfo, check_config, masked_mean
from training.nets import LinearMixer, PerAgent, Policy, gather_actions, polyak


@dataclass
class ICQConfig:
    """ICQ hyperparameters (rewards arrive scaled to max |r| = 1)."""

    critic_alpha: float = 0.1
    actor_beta: float = 0.1
    lr: float = 1e-3
    critic_lr: float = 1e-3
    polyak: float = 0.005
    hidden: int = 64
    critic_hidden: int = 256  # same critic width as InSPO's
    shared: bool = False

    def __post_init__(self) -> None:
        # critic_alpha and actor_beta divide (softmax temperatures), so 0 is refused too.
        check_config(
            self,
            positive=("critic_alpha", "actor_beta", "lr", "critic_lr", "hidden", "critic_hidden"),
            unit_half_open=("polyak",),
        )


class ICQ(Algorithm):
    """ICQ-MA with a linear mixer."""

    name = "icq"

    def __init__(self, config: ICQConfig, info: DataInfo, generator: torch.Generator) -> None:
        super().__init__(config, info, generator)
        n, o, a, h, ch = info.n_agents, info.obs_dim, info.n_actions, config.hidden, config.critic_hidden
        self.pi = Policy(n, o, a, h, config.shared)
        self.qi = PerAgent(n, o, a, ch, config.shared)
        self.mixer = LinearMixer(info.state_dim, n, ch)
        self.qi_targ, self.mixer_targ = copy.deepcopy(self.qi), copy.deepcopy(self.mixer)
        self.modules = {
            "pi": self.pi,
            "qi": self.qi,
            "mixer": self.mixer,
            "qi_targ": self.qi_targ,
            "mixer_targ": self.mixer_targ,
        }
        self.optims = {
            "pi": torch.optim.Adam(self.pi.parameters(), lr=config.lr),
            "critic": torch.optim.Adam([*self.qi.parameters(), *self.mixer.parameters()], lr=config.critic_lr),
        }

    def update(self, b: Batch, step: int) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            q_next_all = self.qi_targ(b["next_obs"])
            q_next_data = self.mixer_targ(
                b["next_state"], gather_actions(q_next_all, b["next_actions"]), b["next_agent_mask"]
            )
            pi_next = self.pi(b["next_obs"], b["next_legal"]).exp()
            q_next_pi = self.mixer_targ(b["next_state"], (pi_next * q_next_all).sum(-1), b["next_agent_mask"])
            boot = ~b["terminated"]
            in_sample = boot & b["has_next_action"]
            logits = torch.where(in_sample, q_next_data / cfg.critic_alpha, torch.full_like(q_next_data, -1e9))
            weights = torch.softmax(logits, 0) * in_sample.float().sum().clamp_min(1.0)
            next_value = torch.where(in_sample, weights * q_next_data, q_next_pi)
            y = b["rewards"] + self.info.gamma * boot.float() * next_value
        q_i = gather_actions(self.qi(b["obs"]), b["actions"])
        critic_loss = (self.mixer(b["state"], q_i, b["agent_mask"]) - y).pow(2).mean()
        self.optims["critic"].zero_grad(set_to_none=True)
        critic_loss.backward()
        self.optims["critic"].step()
        polyak(self.qi_targ, self.qi, cfg.polyak)
        polyak(self.mixer_targ, self.mixer, cfg.polyak)

        logp_all = self.pi(b["obs"], b["legal"])
        with torch.no_grad():
            q_all = self.qi(b["obs"])
            baseline = (logp_all.exp() * q_all).sum(-1)
            adv = self.mixer.weights(b["state"]) * (gather_actions(q_all, b["actions"]) - baseline)
            mask = b["agent_mask"]
            logits = (adv / cfg.actor_beta).masked_fill(~mask, -1e9)
            weight = torch.softmax(logits, 0) * mask.float().sum(0).clamp_min(1.0)
        actor_loss = -masked_mean(weight * gather_actions(logp_all, b["actions"]), b["agent_mask"])
        self.optims["pi"].zero_grad(set_to_none=True)
        actor_loss.backward()
        self.optims["pi"].step()
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item()}

    def log_probs(self, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        return self.pi(obs, legal)

"""InSPO: In-Sample Sequential Policy Optimization (Liu et al., AAAI 2025), as derived in docs/inspo.md.

Objective (behaviour-regularised, maximum-entropy; μ the behaviour policy, τ = α + β):

    max_π  E[ Σ_t γ^t ( r − α·log(π/μ) − β·log π ) ]

Per-agent KKT closed form, agent i updated while its teammates' policies π^{-i} are held:      (1)
    π*^i(a|s) ∝ μ^i(a|s)^{α/τ}·exp(Q^i(s, a)/τ),   Q^i(s, a) = E_{a^{-i} ~ π^{-i}}[ A(s, a, a^{-i}) ]

Everything is computed on dataset samples (s, a) only; code names in brackets:
    critic, in-sample (IQL expectile, no max over actions)  [_critic_step]
        L_Q = E[(r + γ(1 − d)·V(s') − Q(s, a))²],   L_V = E[|e − 1(u < 0)|·u²],  u = Q̄(s, a) − V(s)
        A(s, a) = Q̄(s, a) − V(s)
    behaviour estimate μ̂ by behaviour cloning                                                       [mu]
    teammates' clipped importance ratios on their dataset actions  (2) [_log_ratios]
        ρ^j = min(π^j(a^j | s) / μ̂^j(a^j | s), c),   W^{-i} = min(Π_{j ∈ T(i)} ρ^j, c_joint)
        heterogeneous: T(i) = all teammates at their latest policy (those earlier in this iteration's
        random order already updated); shared: the agents before i in the sample's random permutation
        (one pass with an exclusive cumulative sum of log ρ)  [prefix_log_ratios]
    local advantage sample (joint actions absent from D count as advantage −κ)  (3) [local target]
        y^i = W^{-i}·(A(s, a) + κ) − κ,     local critic q^i(s, a^i) ← least squares on y^i          [local]
        default for two agents (A9 + A10): y^i = Σ_{a^j ∈ supp μ̂^j(·|s,a^i)} π^j(a^j|s)(Q̄(s,a^i,a^j) − V + κ) − κ
                                                                                        [_expected_target]
    closed form (1) with q^i in place of Q^i, as a weight on the dataset action  (4) [closed_form_weight]
        w^i = π*^i(a^i | s) / μ̂^i(a^i | s) = μ̂^i(a^i|s)^{−β/τ}·exp(q^i(s, a^i)/τ) / Z^i(s)
    weighted maximum likelihood (forward KL to π*^i, on dataset actions only)  (5) [pi loss]
        L_π^i = −E_D[ min(w^i, w_max) · log π^i(a^i | s) ]
    β annealed from beta_start to beta over beta_anneal_steps after the warm-up (A11)  [beta_at]
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from training.algos.base import Algorithm, Batch, DataInfo, check_config, expectile_loss, masked_mean, td_target
from training.nets import JointQ, PerAgent, Policy, StateValue, gather_actions, masked_log_softmax, polyak


@dataclass
class InSPOConfig:
    """InSPO hyperparameters (rewards arrive scaled to max |r| = 1 by the harness)."""

    alpha: float = 0.05  # weight of the reverse KL to μ
    beta: float = 0.02  # weight of the entropy bonus (its final value when annealed)
    # Entropy annealing (docs/inspo.md A11): β starts at beta_start when π starts (end of warm-up) and falls
    # linearly to beta over beta_anneal_steps. 0 steps: β is constant and beta_start is not used.
    beta_start: float = 0.5
    beta_anneal_steps: int = 600
    kappa: float = 1.0  # advantage assigned to joint actions absent from the data (as −κ)
    ratio_clip: float = 10.0  # c: upper clip of each teammate ratio π^j/μ̂^j
    joint_ratio_clip: float = 10.0  # c_joint: upper clip of the product of teammate ratios
    max_weight: float = 100.0  # w_max: upper clip of the weighted-ML weight
    # Behaviour support for the normaliser Z^i(s) of (1): own actions with μ̂(b|s) < support_threshold·max_b μ̂(b|s)
    # count as outside supp(μ), where π* is 0 (their local-critic values are extrapolations). 0: every legal action.
    support_threshold: float = 0.01
    expectile: float = 0.97
    polyak: float = 0.005
    lr: float = 1e-3
    critic_lr: float = 1e-3
    local_lr: float = 3e-3
    hidden: int = 64
    critic_hidden: int = 256  # the joint critic must resolve every (state, joint action) pair it was given
    warmup_steps: int = 300  # μ̂ and critics train alone first; then π starts as a copy of μ̂
    shared: bool = False  # parameter sharing with the permutation form (dispatch); False: agent by agent
    # Teammates' ratios (2) divide by μ̂^j(a^j | s, a^i), a behaviour model conditioned on the updated agent's own
    # logged action, instead of the marginal μ̂^j(a^j | s) of A1 (docs/inspo.md A9). Heterogeneous update only.
    conditional_behaviour: bool = True
    # Local target (3) as the explicit sum over the teammate's actions in the support of μ̂^j(· | s, a^i) instead of
    # the importance-weighted dataset sample (docs/inspo.md A10). Takes effect only with conditional_behaviour and
    # two agents (heterogeneous update); otherwise the ratio form (2)-(3).
    teammate_expectation: bool = True
    # Target of the joint critic Q: "td" (r + γ V(s'), IQL) or "mc", the logged discounted return-to-go of the
    # behaviour (Q^μ), which ties a delayed cost to the decisions before it without bootstrapping through V.
    # "mc" needs batches with "returns" (the dispatch harness provides them).
    critic_target: str = "td"

    def __post_init__(self) -> None:
        check_config(
            self,
            # The clips enter as logarithms, the rates and widths must be able to learn.
            positive=(
                "ratio_clip",
                "joint_ratio_clip",
                "max_weight",
                "lr",
                "critic_lr",
                "local_lr",
                "hidden",
                "critic_hidden",
            ),
            non_negative=(
                "alpha",
                "beta",
                "beta_start",
                "beta_anneal_steps",
                "kappa",
                "support_threshold",
                "warmup_steps",
            ),
            unit_open=("expectile",),
            unit_half_open=("polyak",),
        )
        if self.support_threshold > 1:  # relative to μ̂'s mode: above 1 no action would be in the support
            raise ValueError(f"support_threshold: must be at most 1, got {self.support_threshold}")
        if self.alpha + self.beta <= 0:  # τ = α + β divides in the closed-form policy (1)
            raise ValueError("alpha, beta: must not both be 0 (their sum is the policy's temperature)")
        if self.beta_anneal_steps and self.alpha + self.beta_start <= 0:  # τ at the start of the annealing
            raise ValueError("alpha, beta_start: must not both be 0 while β is annealed (their sum is the temperature)")
        if self.critic_target not in ("td", "mc"):
            raise ValueError(f"critic_target: {self.critic_target!r} is not 'td' or 'mc'")


def closed_form_policy(q: torch.Tensor, log_mu: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """π* ∝ μ^{α/(α+β)}·exp(Q/(α+β)) over the last axis (equation (1)); returns probabilities."""
    tau = alpha + beta
    return torch.softmax((alpha / tau) * log_mu + q / tau, dim=-1)


def closed_form_log_weight(
    q_all: torch.Tensor,
    log_mu_all: torch.Tensor,
    action: torch.Tensor,
    legal: torch.Tensor,
    alpha: float,
    beta: float,
    support_threshold: float = 0.0,
) -> torch.Tensor:
    """log(π*(a|s)/μ̂(a|s)) at the dataset action (equation (4)); inputs [B, A], action [B].

    The normaliser runs over the behaviour support only: legal actions b with
    μ̂(b|s) ≥ support_threshold·max_b' μ̂(b'|s) (all legal actions when the threshold is 0). Outside it π* is 0,
    whatever value the local critic extrapolates there; a dataset action outside it gets weight 0.
    """
    tau = alpha + beta
    support = legal
    if support_threshold > 0.0:
        floor = log_mu_all.masked_fill(~legal, -1e9).max(-1, keepdim=True).values + math.log(support_threshold)
        support = legal & (log_mu_all >= floor)
    logits = ((alpha / tau) * log_mu_all + q_all / tau).masked_fill(~support, -1e9)
    log_pi_star = torch.log_softmax(logits, dim=-1).gather(-1, action[:, None]).squeeze(-1)
    return log_pi_star - log_mu_all.gather(-1, action[:, None]).squeeze(-1)


def prefix_log_ratios(log_ratio: torch.Tensor, perm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ of log-ratios of the agents placed before each agent in ``perm``; [B, N] each, by agent index.

    ``perm[b, k]`` is the agent at position k of sample b; masked agents contribute 0.
    """
    lr = torch.where(mask, log_ratio, torch.zeros_like(log_ratio))
    in_order = lr.gather(1, perm)
    exclusive = in_order.cumsum(1) - in_order
    return torch.zeros_like(lr).scatter(1, perm, exclusive)


def random_permutations(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random order of the agents per sample; absent agents are placed last."""
    # Drawn from the CPU generator (one stream, checkpointed) and moved: the same orders on any device.
    keys = torch.rand(mask.shape, generator=generator).to(mask.device) + (~mask).float() * 2.0
    return keys.argsort(dim=1)


class InSPO(Algorithm):
    """InSPO with heterogeneous per-agent networks or parameter sharing (see module docstring)."""

    name = "inspo"

    def __init__(self, config: InSPOConfig, info: DataInfo, generator: torch.Generator) -> None:
        super().__init__(config, info, generator)
        n, o, a, h, sh = info.n_agents, info.obs_dim, info.n_actions, config.hidden, config.shared
        self._install(
            Policy(n, o, a, h, sh),
            Policy(n, o, a, h, sh),
            PerAgent(n, o, a, h, sh),
            JointQ(info.state_dim, n, a, config.critic_hidden),
            StateValue(info.state_dim, config.critic_hidden),
        )
        if config.conditional_behaviour and not sh:
            # μ̂^j(a^j | o^j, a^i): agent j's network sees its observation and a one-hot of (i, a^i).
            self.mu_cond = PerAgent(n, o + n * a, a, h, False)
            self.modules["mu_cond"] = self.mu_cond
            self.optims["mu_cond"] = torch.optim.Adam(self.mu_cond.parameters(), lr=config.lr)

    def _install(self, pi: Policy, mu: Policy, local: PerAgent, q: JointQ, v: StateValue) -> None:
        """Adopt π, μ̂, the local critic, Q and V, and build their optimisers (dispatch brings its own nets)."""
        cfg = self.config
        self.pi, self.mu, self.local, self.q, self.v = pi, mu, local, q, v
        self.q_targ = copy.deepcopy(q)
        self.modules = {"pi": pi, "mu": mu, "local": local, "q": q, "q_targ": self.q_targ, "v": v}
        self.optims = {
            "pi": torch.optim.Adam(pi.parameters(), lr=cfg.lr),
            "mu": torch.optim.Adam(mu.parameters(), lr=cfg.lr),
            "local": torch.optim.Adam(local.parameters(), lr=cfg.local_lr),
            "critic": torch.optim.Adam([*q.parameters(), *v.parameters()], lr=cfg.critic_lr),
        }

    def beta_at(self, step: int) -> float:
        """Entropy weight β at a training step: linear from beta_start to beta after the warm-up (A11)."""
        cfg = self.config
        if cfg.beta_anneal_steps <= 0:
            return cfg.beta
        frac = min(max(step - cfg.warmup_steps, 0) / cfg.beta_anneal_steps, 1.0)
        return cfg.beta_start + (cfg.beta - cfg.beta_start) * frac

    # --- pieces ---------------------------------------------------------------------------------
    def _critic_step(self, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """In-sample critic (IQL): returns the advantage A(s, a) of the dataset joint action."""
        with torch.no_grad():
            if self.config.critic_target == "mc":
                if "returns" not in b:
                    raise ValueError("critic_target='mc' needs batches with logged returns-to-go ('returns')")
                y = b["returns"]
            else:
                y = td_target(b["rewards"], self.info.gamma, b["terminated"], self.v(b["next_state"]))
            q_bar = self.q_targ(b["state"], b["actions"], b["agent_mask"])
        q_loss = (self.q(b["state"], b["actions"], b["agent_mask"]) - y).pow(2).mean()
        v = self.v(b["state"])
        v_loss = expectile_loss(q_bar - v, self.config.expectile).mean()
        self.optims["critic"].zero_grad(set_to_none=True)
        (q_loss + v_loss).backward()
        self.optims["critic"].step()
        polyak(self.q_targ, self.q, self.config.polyak)
        return (q_bar - v.detach()), {"q_loss": q_loss.item(), "v_loss": v_loss.item()}

    def _bc_step(self, b: Batch) -> float:
        logp = gather_actions(self.mu(b["obs"], b["legal"]), b["actions"])
        loss = -masked_mean(logp, b["agent_mask"])
        self.optims["mu"].zero_grad(set_to_none=True)
        loss.backward()
        self.optims["mu"].step()
        return loss.item()

    def _cond_log_mu(self, b: Batch, i: int) -> torch.Tensor:
        """log μ̂^j(a^j | s, a^i) of every agent's dataset action given agent i's dataset action, [B, N]."""
        n, a = self.info.n_agents, self.info.n_actions
        code = torch.zeros(b["actions"].shape[0], n * a, dtype=b["obs"].dtype, device=b["obs"].device)
        code.scatter_(1, (i * a + b["actions"][:, i])[:, None], b["agent_mask"][:, i : i + 1].to(code.dtype))
        aug = torch.cat([b["obs"], code[:, None].expand(-1, n, -1)], dim=-1)
        return gather_actions(masked_log_softmax(self.mu_cond(aug), b["legal"]), b["actions"])

    def _cond_bc_step(self, b: Batch) -> float:
        """Behaviour cloning of each agent's action given each teammate's action (i ≠ j pairs)."""
        n, mask = self.info.n_agents, b["agent_mask"]
        loss = torch.zeros((), device=mask.device)
        for i in range(n):
            other = mask.clone()
            other[:, i] = False
            loss = loss - masked_mean(self._cond_log_mu(b, i), other) / n
        self.optims["mu_cond"].zero_grad(set_to_none=True)
        loss.backward()
        self.optims["mu_cond"].step()
        return loss.item()

    def _log_ratios(self, b: Batch, log_mu_a: torch.Tensor) -> torch.Tensor:
        """log ρ^j = log min(π^j/μ̂^j, c) on each agent's dataset action, [B, N] (equation (2))."""
        with torch.no_grad():
            log_pi_a = gather_actions(self.pi(b["obs"], b["legal"]), b["actions"])
        return (log_pi_a - log_mu_a).clamp(max=math.log(self.config.ratio_clip))

    def _local_target(self, log_w: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """y = W·(A + κ) − κ with W = min(exp(log_w), c_joint) (equation (3))."""
        k = self.config.kappa
        w = log_w.clamp(max=math.log(self.config.joint_ratio_clip)).exp()
        return w * (adv + k) - k

    def _expected_target(self, b: Batch, i: int, adv: torch.Tensor) -> torch.Tensor:
        """y^i = Σ_{a^j ∈ S^j(s, a^i)} π^j(a^j|s)·(Q̄(s, a^i, a^j) − V(s) + κ) − κ for two agents (A10).

        S^j(s, a^i): legal a^j with μ̂^j(a^j | s, a^i) ≥ support_threshold·max; the joint critic is evaluated only
        there (joint actions the conditional behaviour model places in the data), the rest of π^j's mass counts −κ.
        """
        cfg, n, a = self.config, self.info.n_agents, self.info.n_actions
        j = 1 - i
        with torch.no_grad():
            code = torch.zeros(b["actions"].shape[0], n * a, dtype=b["obs"].dtype, device=b["obs"].device)
            code.scatter_(1, (i * a + b["actions"][:, i])[:, None], 1.0)
            legal_j = b["legal"][:, j]
            log_mu_c = masked_log_softmax(
                self.mu_cond.forward_agent(j, torch.cat([b["obs"], code[:, None].expand(-1, n, -1)], dim=-1)),
                legal_j,
            )
            floor = log_mu_c.masked_fill(~legal_j, -1e9).max(-1, keepdim=True).values
            support = legal_j & (log_mu_c >= floor + math.log(max(cfg.support_threshold, 1e-12)))
            pi_j = self.pi.forward_agent(j, b["obs"], b["legal"]).exp()
            bsz = b["actions"].shape[0]
            acts = b["actions"][:, None, :].expand(bsz, a, n).clone()
            acts[:, :, j] = torch.arange(a, device=acts.device)
            state = b["state"][:, None].expand(bsz, a, -1).reshape(bsz * a, -1)
            mask = b["agent_mask"][:, None].expand(bsz, a, n).reshape(bsz * a, n)
            q_all = self.q_targ(state, acts.reshape(bsz * a, n), mask).reshape(bsz, a)
            adv_all = q_all - self.v(b["state"])[:, None]
            k = cfg.kappa
            y = (pi_j * support * (adv_all + k)).sum(-1) - k
            # An absent teammate: the logged advantage itself.
            return torch.where(b["agent_mask"][:, j], y, adv)

    def _agent_step(self, b: Batch, i: int, y: torch.Tensor, log_mu_all: torch.Tensor, beta: float) -> dict[str, float]:
        """Local-critic regression on the target y then weighted ML for agent i (heterogeneous update)."""
        cfg = self.config
        act, valid = b["actions"][:, i], b["agent_mask"][:, i]
        q_i = self.local.forward_agent(i, b["obs"]).gather(-1, act[:, None]).squeeze(-1)
        local_loss = masked_mean((q_i - y).pow(2), valid)
        self.optims["local"].zero_grad(set_to_none=True)
        local_loss.backward()
        self.optims["local"].step()
        with torch.no_grad():
            q_all = self.local.forward_agent(i, b["obs"])
            log_wt = closed_form_log_weight(
                q_all, log_mu_all[:, i], act, b["legal"][:, i], cfg.alpha, beta, cfg.support_threshold
            )
            weight = log_wt.exp().clamp(max=cfg.max_weight)
        logp = self.pi.forward_agent(i, b["obs"], b["legal"]).gather(-1, act[:, None]).squeeze(-1)
        pi_loss = -masked_mean(weight * logp, valid)
        self.optims["pi"].zero_grad(set_to_none=True)
        pi_loss.backward()
        self.optims["pi"].step()
        return {"local_loss": local_loss.item(), "pi_loss": pi_loss.item(), "weight_max": weight.max().item()}

    def _shared_step(
        self, b: Batch, adv: torch.Tensor, log_mu_all: torch.Tensor, log_mu_a: torch.Tensor, beta: float
    ) -> dict[str, float]:
        """All agents at once with parameter sharing: permutation + prefix products of ratios."""
        cfg = self.config
        mask, act = b["agent_mask"], b["actions"]
        perm = random_permutations(mask, self.generator)
        log_w = prefix_log_ratios(self._log_ratios(b, log_mu_a), perm, mask)
        y = self._local_target(log_w, adv[:, None])
        q = gather_actions(self.local(b["obs"]), act)
        local_loss = masked_mean((q - y).pow(2), mask)
        self.optims["local"].zero_grad(set_to_none=True)
        local_loss.backward()
        self.optims["local"].step()
        with torch.no_grad():
            q_all = self.local(b["obs"])
            bsz, n, a = q_all.shape
            log_wt = closed_form_log_weight(
                q_all.reshape(bsz * n, a),
                log_mu_all.reshape(bsz * n, a),
                act.reshape(-1),
                b["legal"].reshape(bsz * n, a),
                cfg.alpha,
                beta,
                cfg.support_threshold,
            )
            weight = log_wt.reshape(bsz, n).exp().clamp(max=cfg.max_weight)
        logp = gather_actions(self.pi(b["obs"], b["legal"]), act)
        pi_loss = -masked_mean(weight * logp, mask)
        self.optims["pi"].zero_grad(set_to_none=True)
        pi_loss.backward()
        self.optims["pi"].step()
        return {"local_loss": local_loss.item(), "pi_loss": pi_loss.item(), "weight_max": weight.max().item()}

    # --- the iteration --------------------------------------------------------------------------
    def update(self, batch: Batch, step: int) -> dict[str, float]:
        adv, logs = self._critic_step(batch)
        logs["bc_loss"] = self._bc_step(batch)
        conditional = hasattr(self, "mu_cond")
        if conditional:
            logs["cond_bc_loss"] = self._cond_bc_step(batch)
        if step < self.config.warmup_steps:
            return logs
        if step == self.config.warmup_steps:
            # π_0 = μ̂: the first sequential step starts from the behaviour policy.
            self.pi.load_state_dict(self.mu.state_dict())
        with torch.no_grad():
            log_mu_all = self.mu(batch["obs"], batch["legal"])
            log_mu_a = gather_actions(log_mu_all, batch["actions"])
        beta = self.beta_at(step)
        logs["beta"] = beta
        if self.config.shared:
            logs.update(self._shared_step(batch, adv, log_mu_all, log_mu_a, beta))
            return logs
        expected = conditional and self.config.teammate_expectation and self.info.n_agents == 2
        order = torch.randperm(self.info.n_agents, generator=self.generator).tolist()
        for i in order:
            # Ratios are recomputed before each agent, so teammates updated earlier in this order count
            # with their new policy π_new (the sequential part of the update).
            if expected:
                y = self._expected_target(batch, i, adv)
            else:
                if conditional:
                    with torch.no_grad():
                        log_rho = self._log_ratios(batch, self._cond_log_mu(batch, i))
                else:
                    log_rho = self._log_ratios(batch, log_mu_a)
                log_rho = torch.where(batch["agent_mask"], log_rho, torch.zeros_like(log_rho))
                y = self._local_target(log_rho.sum(1) - log_rho[:, i], adv)
            logs.update(self._agent_step(batch, i, y, log_mu_all, beta))
        return logs

    def log_probs(self, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        return self.pi(obs, legal)

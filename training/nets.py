"""Networks shared by the algorithms: per-agent (or parameter-shared) policies and critics."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NEG_INF = -1e9  # finite, so 0 * masked logit stays 0 instead of NaN


def mlp(inp: int, out: int, hidden: int = 64, layers: int = 2) -> nn.Sequential:
    """A ReLU multilayer perceptron."""
    mods: list[nn.Module] = []
    size = inp
    for _ in range(layers):
        mods += [nn.Linear(size, hidden), nn.ReLU()]
        size = hidden
    mods.append(nn.Linear(size, out))
    return nn.Sequential(*mods)


def masked_log_softmax(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with illegal actions at (numerically) zero probability."""
    return F.log_softmax(logits.masked_fill(~legal, NEG_INF), dim=-1)


def gather_actions(values: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Pick ``values[..., a]`` for each agent's action: [B, N, A], [B, N] -> [B, N]."""
    return values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


class PerAgent(nn.Module):
    """Maps agent observations [B, N, O] to per-action outputs [B, N, A].

    ``shared=False``: one network per agent (heterogeneous agents, the literal agent-by-agent update).
    ``shared=True``: one network for all agents with the agent's one-hot id appended to its input.
    """

    def __init__(self, n_agents: int, obs_dim: int, n_out: int, hidden: int = 64, shared: bool = False) -> None:
        super().__init__()
        self.n_agents, self.shared = n_agents, shared
        if shared:
            self.net = mlp(obs_dim + n_agents, n_out, hidden)
        else:
            self.nets = nn.ModuleList(mlp(obs_dim, n_out, hidden) for _ in range(n_agents))

    def forward_agent(self, i: int, obs: torch.Tensor) -> torch.Tensor:
        """Outputs [B, A] of agent ``i`` alone, so that no other agent's parameters enter the graph."""
        if self.shared:
            ids = torch.zeros(obs.shape[0], self.n_agents, dtype=obs.dtype, device=obs.device)
            ids[:, i] = 1.0
            out: torch.Tensor = self.net(torch.cat([obs[:, i], ids], dim=-1))
            return out
        out = self.nets[i](obs[:, i])
        return out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.shared:
            ids = torch.eye(self.n_agents, dtype=obs.dtype, device=obs.device).expand(obs.shape[0], -1, -1)
            return self.net(torch.cat([obs, ids], dim=-1))
        return torch.stack([net(obs[:, i]) for i, net in enumerate(self.nets)], dim=1)


class Policy(nn.Module):
    """Decentralised categorical policies π^i(a^i | o^i) with legal-action masking."""

    def __init__(self, n_agents: int, obs_dim: int, n_actions: int, hidden: int = 64, shared: bool = False) -> None:
        super().__init__()
        self.body = PerAgent(n_agents, obs_dim, n_actions, hidden, shared)

    def forward(self, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [B, N, A]."""
        return masked_log_softmax(self.body(obs), legal)

    def forward_agent(self, i: int, obs: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [B, A] of agent ``i`` only."""
        return masked_log_softmax(self.body.forward_agent(i, obs), legal[:, i])


class JointQ(nn.Module):
    """Centralised Q(s, a^1..a^N): the state and every present agent's one-hot action -> scalar."""

    def __init__(self, state_dim: int, n_agents: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.net = mlp(state_dim + n_agents * n_actions, 1, hidden)

    def forward(self, state: torch.Tensor, actions: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(actions, self.n_actions).float() * agent_mask.unsqueeze(-1).float()
        return self.net(torch.cat([state, onehot.flatten(1)], dim=-1)).squeeze(-1)


class StateValue(nn.Module):
    """V(s) -> scalar."""

    def __init__(self, state_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = mlp(state_dim, 1, hidden)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).squeeze(-1)


class LinearMixer(nn.Module):
    """Q_tot(s, a) = Σ_i w_i(s) Q_i + b(s) with w_i(s) ≥ 0 (the mixer of ICQ and OMIGA)."""

    def __init__(self, state_dim: int, n_agents: int, hidden: int = 64) -> None:
        super().__init__()
        self.w = mlp(state_dim, n_agents, hidden, layers=1)
        self.b = mlp(state_dim, 1, hidden, layers=1)

    def weights(self, state: torch.Tensor) -> torch.Tensor:
        """Non-negative per-agent weights w_i(s), shape [B, N]."""
        return torch.abs(self.w(state))

    def forward(self, state: torch.Tensor, per_agent: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
        w = self.weights(state) * agent_mask.float()
        return (w * per_agent).sum(-1) + self.b(state).squeeze(-1)


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target ← (1 − tau)·target + tau·source."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.mul_(1.0 - tau).add_(s, alpha=tau)

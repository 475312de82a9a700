"""Permutation-equivariant dispatch networks (torch).

Inputs, as in the model contract (:mod:`dispatch.model`): ``agent`` [B, N, Fa], ``cand`` [B, N, K, Fc],
``cand_mask`` [B, N, K]. A courier takes part in the pooled context when it has at least one
candidate (``cand_mask.any(-1)``); padded couriers never do, in training and serving alike, so the
exported model needs no separate courier mask.

- :class:`Scorer`: a shared MLP scores every (courier, candidate, context) triple and the courier's
  ``wait``; the context is the mean over couriers of a per-courier embedding, so a courier knows how
  contested the city is. The same weights serve 20 couriers or 400, in any order. Output
  [B, N, K + 1] logits (wait last), illegal candidates at −1e9.
- :class:`SetQ`: a centralised critic of a joint action: per-courier embeddings of (courier, chosen
  candidate or wait) pooled by mean and scaled sum, plus the global state → Q(s, a).
- :class:`SetV`: the same over (courier, its candidate summary) → V(s).
"""

from __future__ import annotations

import torch
from torch import nn

from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES

FA, FC = len(AGENT_FEATURES), len(CANDIDATE_FEATURES)
MASKED = -1e9


def mlp(inp: int, out: int, hidden: int, layers: int = 2) -> nn.Sequential:
    """A ReLU MLP."""
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


def pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean and scaled sum over the courier axis: [B, N, H] → [B, 2H]."""
    m = mask.unsqueeze(-1).to(x.dtype)
    s = (x * m).sum(1)
    n = m.sum(1).clamp_min(1.0)
    return torch.cat([s / n, s / 100.0], dim=-1)


def candidate_summary(cand: torch.Tensor, cand_mask: torch.Tensor) -> torch.Tensor:
    """Mean of a courier's legal candidates' features [B, N, Fc] (zeros when it has none)."""
    m = cand_mask.unsqueeze(-1).to(cand.dtype)
    return (cand * m).sum(2) / m.sum(2).clamp_min(1.0)


class Scorer(nn.Module):
    """Logits over each courier's K candidates and wait; see the module docstring."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = mlp(FA + FC, hidden, hidden, 1)
        self.cand = mlp(FA + FC + 2 * hidden, 1, hidden)
        self.wait = mlp(FA + FC + 2 * hidden, 1, hidden)

    def forward(self, agent: torch.Tensor, cand: torch.Tensor, cand_mask: torch.Tensor) -> torch.Tensor:
        """[B, N, K + 1] logits; masked candidates at −1e9."""
        b, n, k, _ = cand.shape
        present = cand_mask.any(-1)
        summary = candidate_summary(cand, cand_mask)
        ctx = pool(torch.relu(self.embed(torch.cat([agent, summary], -1))), present)  # [B, 2H]
        ctx_n = ctx.unsqueeze(1).expand(b, n, ctx.shape[-1])
        per_cand = torch.cat(
            [agent.unsqueeze(2).expand(b, n, k, FA), cand, ctx_n.unsqueeze(2).expand(b, n, k, ctx.shape[-1])], -1
        )
        cand_logit = self.cand(per_cand).squeeze(-1)
        cand_logit = torch.where(cand_mask, cand_logit, torch.full_like(cand_logit, MASKED))
        wait_logit = self.wait(torch.cat([agent, summary, ctx_n], -1))
        return torch.cat([cand_logit, wait_logit], -1)


def legal_actions(cand_mask: torch.Tensor) -> torch.Tensor:
    """[B, N, K + 1]: the legal candidates plus wait (always legal)."""
    ones = torch.ones((*cand_mask.shape[:-1], 1), dtype=torch.bool, device=cand_mask.device)
    return torch.cat([cand_mask, ones], -1)


def chosen_features(cand: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Features of each courier's chosen candidate and a wait flag, [B, N, Fc + 1] (wait: zeros, 1)."""
    b, n, k, fc = cand.shape
    is_wait = action >= k
    idx = action.clamp(max=k - 1).view(b, n, 1, 1).expand(b, n, 1, fc)
    feats = cand.gather(2, idx).squeeze(2)
    feats = torch.where(is_wait.unsqueeze(-1), torch.zeros_like(feats), feats)
    return torch.cat([feats, is_wait.unsqueeze(-1).to(cand.dtype)], -1)


class SetQ(nn.Module):
    """Centralised Q(s, a) over a varying set of couriers."""

    def __init__(self, state_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.embed = mlp(FA + FC + FC + 1, hidden, hidden, 1)
        self.head = mlp(2 * hidden + state_dim, 1, hidden)

    def forward(self, s: dict[str, torch.Tensor], action: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
        """[B] value of the joint action."""
        summary = candidate_summary(s["cand"], s["cand_mask"])
        x = torch.cat([s["agent"], summary, chosen_features(s["cand"], action)], -1)
        h = pool(torch.relu(self.embed(x)), agent_mask)
        return self.head(torch.cat([h, s["global"]], -1)).squeeze(-1)


class SetV(nn.Module):
    """State value V(s) over a varying set of couriers."""

    def __init__(self, state_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.embed = mlp(FA + FC, hidden, hidden, 1)
        self.head = mlp(2 * hidden + state_dim, 1, hidden)

    def forward(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B] state value."""
        summary = candidate_summary(s["cand"], s["cand_mask"])
        h = pool(torch.relu(self.embed(torch.cat([s["agent"], summary], -1))), s["agent_mask"])
        return self.head(torch.cat([h, s["global"]], -1)).squeeze(-1)

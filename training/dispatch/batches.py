"""Minibatches of logged dispatch decisions as padded torch tensors.

A sample is one decision epoch with all its agents (available couriers), padded to the largest epoch
of the minibatch. ``state``/``next_state`` carry the same per-courier tensors (for the set critics)
plus the global features; a terminal epoch's ``next_state`` is all zeros and masked out by
``terminated`` in the TD target.
"""

from __future__ import annotations

import numpy as np
import torch

from simulator.logs.view import TrainingView
from training.dispatch.nets import legal_actions


def _pad(view: TrainingView, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Per-courier tensors of the epochs ``idx`` (−1 = an empty, all-masked epoch)."""
    k = view.k
    starts = np.where(idx >= 0, view.agent_offset[np.maximum(idx, 0)], 0)
    ends = np.where(idx >= 0, view.agent_offset[np.maximum(idx, 0) + 1], 0)
    counts = ends - starts
    n = max(int(counts.max()) if counts.size else 0, 1)
    b = len(idx)
    fa, fc = view.agent_feats.shape[1], view.cand_feats.shape[2]
    agent = np.zeros((b, n, fa), np.float32)
    cand = np.zeros((b, n, k, fc), np.float32)
    cmask = np.zeros((b, n, k), bool)
    amask = np.zeros((b, n), bool)
    action = np.full((b, n), k, np.int64)
    logp = np.zeros((b, n), np.float32)
    rank = np.zeros((b, n), np.int64)
    glob = np.zeros((b, view.state.shape[1]), np.float32)
    for j, (s, e) in enumerate(zip(starts, ends, strict=True)):
        m = e - s
        if idx[j] >= 0:
            glob[j] = view.state[idx[j]]
        if m == 0:
            continue
        agent[j, :m] = view.agent_feats[s:e]
        cand[j, :m] = view.cand_feats[s:e]
        cmask[j, :m] = view.cand_mask[s:e]
        amask[j, :m] = True
        action[j, :m] = view.action[s:e]
        logp[j, :m] = view.behaviour_logp[s:e]
        rank[j, :m] = view.rank[s:e]
    t = {
        "agent": torch.from_numpy(agent),
        "cand": torch.from_numpy(cand),
        "cand_mask": torch.from_numpy(cmask),
        "agent_mask": torch.from_numpy(amask),
        "global": torch.from_numpy(glob),
    }
    t["action"] = torch.from_numpy(action)
    t["behaviour_logp"] = torch.from_numpy(logp)
    t["rank"] = torch.from_numpy(rank)
    return t


def returns_to_go(view: TrainingView, gamma: float) -> np.ndarray:
    """Discounted return from each epoch to the end of its logged day (float32, one per epoch).

    A day's last epoch contributes its own reward only (a truncated day is not bootstrapped).
    """
    out = np.zeros(view.n_epochs, dtype=np.float64)
    nxt, reward, term = view.next_index, view.reward.astype(np.float64), view.terminated
    for t in range(view.n_epochs - 1, -1, -1):  # next_index[t] is t + 1 or -1: later epochs are done first
        j = nxt[t]
        out[t] = reward[t] + (gamma * out[j] if j >= 0 and not term[t] else 0.0)
    return out.astype(np.float32)


def minibatch(view: TrainingView, idx: np.ndarray, returns: np.ndarray | None = None) -> dict[str, object]:
    """The minibatch of epochs ``idx`` in the layout the algorithms read (plus ``returns`` when given)."""
    cur = _pad(view, idx)
    nxt = _pad(view, view.next_index[idx])
    state = {k: cur[k] for k in ("agent", "cand", "cand_mask", "agent_mask", "global")}
    next_state = {k: nxt[k] for k in ("agent", "cand", "cand_mask", "agent_mask", "global")}
    return {
        "obs": state,
        "state": state,
        "next_state": next_state,
        "legal": legal_actions(cur["cand_mask"]),
        "actions": cur["action"],
        "agent_mask": cur["agent_mask"],
        "behaviour_logp": cur["behaviour_logp"],
        "rank": cur["rank"],
        "rewards": torch.from_numpy(view.reward[idx].astype(np.float32)),
        "terminated": torch.from_numpy(view.terminated[idx]),
    } | ({"returns": torch.from_numpy(returns[idx])} if returns is not None else {})


def to_device(batch: dict[str, object], device: torch.device) -> dict[str, object]:
    """The minibatch with every tensor (nested dicts included) on ``device``; a no-op on CPU."""
    if device.type == "cpu":
        return batch
    out: dict[str, object] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            out[key] = value
    return out

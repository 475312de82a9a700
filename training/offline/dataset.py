"""Generic episode-major offline MARL dataset (numpy-backed, torch tensors on demand).

Shapes use E episodes, T steps (padded), N agents, O observation features, S state features,
A actions per agent. ``filled[e, t]`` marks real steps; ``agent_mask[e, t, n]`` marks agents that
exist at that step (the dispatch data has a varying number of couriers). ``final_obs``/``final_state``
hold the observation that follows the last filled step, so a truncated episode can bootstrap.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


@dataclass
class Transitions:
    """Flat (s, a, r, s') samples built from an :class:`OfflineDataset`; numpy arrays, one row per step."""

    obs: np.ndarray  # [B, N, O]
    state: np.ndarray  # [B, S]
    actions: np.ndarray  # [B, N]
    legal: np.ndarray  # [B, N, A]
    agent_mask: np.ndarray  # [B, N]
    rewards: np.ndarray  # [B]
    terminated: np.ndarray  # [B]  no bootstrap from s'
    next_obs: np.ndarray  # [B, N, O]
    next_state: np.ndarray  # [B, S]
    next_legal: np.ndarray  # [B, N, A]
    next_agent_mask: np.ndarray  # [B, N]
    next_actions: np.ndarray  # [B, N]  logged action at s' (0 where there is none)
    has_next_action: np.ndarray  # [B]  false at an episode's last step
    behaviour_probs: np.ndarray | None  # [B, N]

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def to_torch(self, device: str = "cpu") -> dict[str, Any]:
        """All arrays as torch tensors (float32 / int64 / bool) on ``device``."""
        import torch

        out: dict[str, Any] = {}
        for name, arr in self.__dict__.items():
            if arr is None:
                out[name] = None
                continue
            tensor = torch.from_numpy(np.ascontiguousarray(arr))
            if tensor.dtype == torch.float64:
                tensor = tensor.float()
            out[name] = tensor.to(device)
        return out


@dataclass
class OfflineDataset:
    """Episode-major offline multi-agent data; see the module docstring for the shapes."""

    obs: np.ndarray
    state: np.ndarray
    actions: np.ndarray
    legal: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    filled: np.ndarray
    agent_mask: np.ndarray
    final_obs: np.ndarray
    final_state: np.ndarray
    behaviour_probs: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_episodes(self) -> int:
        return int(self.actions.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[1])

    @property
    def n_agents(self) -> int:
        return int(self.actions.shape[2])

    @property
    def n_actions(self) -> int:
        return int(self.legal.shape[3])

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[3])

    @property
    def state_dim(self) -> int:
        return int(self.state.shape[2])

    def validate(self) -> None:
        """Raise ``ValueError`` when shapes disagree or logged actions are illegal."""
        e, t, n = self.actions.shape
        checks = {
            "obs": (self.obs.shape[:3], (e, t, n)),
            "state": (self.state.shape[:2], (e, t)),
            "legal": (self.legal.shape[:3], (e, t, n)),
            "rewards": (self.rewards.shape, (e, t)),
            "terminated": (self.terminated.shape, (e, t)),
            "truncated": (self.truncated.shape, (e, t)),
            "filled": (self.filled.shape, (e, t)),
            "agent_mask": (self.agent_mask.shape, (e, t, n)),
            "final_obs": (self.final_obs.shape[:2], (e, n)),
            "final_state": (self.final_state.shape[:1], (e,)),
        }
        if self.behaviour_probs is not None:
            checks["behaviour_probs"] = (self.behaviour_probs.shape, (e, t, n))
        for name, (got, want) in checks.items():
            if tuple(got) != tuple(want):
                raise ValueError(f"dataset field {name} has shape {tuple(got)}, expected {tuple(want)}")
        live = self.filled[:, :, None] & self.agent_mask
        taken = np.take_along_axis(self.legal, self.actions[..., None], axis=3)[..., 0]
        if np.any(live & ~taken):
            raise ValueError("dataset holds an action that its own legal-action mask forbids")
        ends = self.terminated | self.truncated
        last = self.filled & ~np.concatenate([self.filled[:, 1:], np.zeros((e, 1), bool)], axis=1)
        if np.any(last & ~ends):
            raise ValueError("every episode's last filled step must be terminated or truncated")

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, shape [E]."""
        return np.where(self.filled, self.rewards, 0.0).sum(axis=1)

    def transitions(self) -> Transitions:
        """Flatten the filled steps into (s, a, r, s') rows; s' of a truncated last step is ``final_*``."""
        e, _, n = self.actions.shape
        nxt_obs = np.concatenate([self.obs[:, 1:], self.final_obs[:, None]], axis=1)
        nxt_state = np.concatenate([self.state[:, 1:], self.final_state[:, None]], axis=1)
        # A final observation is not an action point: allow every action, all agents present.
        final_legal = np.ones((e, 1, n, self.n_actions), bool)
        nxt_legal = np.concatenate([self.legal[:, 1:], final_legal], axis=1)
        nxt_mask = np.concatenate([self.agent_mask[:, 1:], np.ones((e, 1, n), bool)], axis=1)
        # Where the episode ends before the padded horizon, step t+1 is padding: use the final obs.
        last = self.filled & ~np.concatenate([self.filled[:, 1:], np.zeros((e, 1), bool)], axis=1)
        nxt_obs = np.where(last[..., None, None], self.final_obs[:, None], nxt_obs)
        nxt_state = np.where(last[..., None], self.final_state[:, None], nxt_state)
        nxt_legal = np.where(last[..., None, None], True, nxt_legal)
        nxt_mask = np.where(last[..., None], True, nxt_mask)
        nxt_act = np.concatenate([self.actions[:, 1:], np.zeros((e, 1, n), self.actions.dtype)], axis=1)
        nxt_act = np.where(last[..., None], 0, nxt_act)
        sel = self.filled
        bp = None if self.behaviour_probs is None else self.behaviour_probs[sel].astype(np.float32)
        return Transitions(
            obs=self.obs[sel].astype(np.float32),
            state=self.state[sel].astype(np.float32),
            actions=self.actions[sel].astype(np.int64),
            legal=self.legal[sel].astype(bool),
            agent_mask=self.agent_mask[sel].astype(bool),
            rewards=self.rewards[sel].astype(np.float32),
            terminated=self.terminated[sel].astype(bool),
            next_obs=nxt_obs[sel].astype(np.float32),
            next_state=nxt_state[sel].astype(np.float32),
            next_legal=nxt_legal[sel].astype(bool),
            next_agent_mask=nxt_mask[sel].astype(bool),
            next_actions=nxt_act[sel].astype(np.int64),
            has_next_action=~last[sel],
            behaviour_probs=bp,
        )

    def save(self, path: str | Path) -> None:
        """Write the dataset atomically as ``.npz`` with a format version."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        arrays["_format_version"] = np.array(FORMAT_VERSION)
        arrays["_meta"] = np.array(json.dumps(self.meta))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> OfflineDataset:
        """Read a dataset written by :meth:`save`; rejects unknown format versions."""
        with np.load(path, allow_pickle=False) as z:
            version = int(z["_format_version"]) if "_format_version" in z else -1
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: dataset format version {version}, this code reads {FORMAT_VERSION}")
            kwargs: dict[str, Any] = {k: z[k] for k in z.files if not k.startswith("_")}
            kwargs["meta"] = json.loads(str(z["_meta"]))
        kwargs.setdefault("behaviour_probs", None)
        return cls(**kwargs)

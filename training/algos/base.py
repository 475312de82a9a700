"""What every algorithm provides to the harness: an update on a batch, a policy, and its state."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
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
MAX_HIDDEN = 8192


def check_config(
    config: Any,
    *,
    positive: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    unit_open: tuple[str, ...] = (),
    unit_half_open: tuple[str, ...] = (),
) -> None:
    """Refuse an algorithm config whose values cannot train; ValueError names the field.

    Every numeric field must hold a finite number of its declared kind and every ``bool`` field a bool
    (a config is also built from JSON and from ``--set``). Then: ``positive`` fields > 0 (and int sizes
    at least 1), ``non_negative`` >= 0, ``unit_open`` in (0, 1), ``unit_half_open`` in (0, 1].
    """
    for f in fields(config):
        value = getattr(config, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{f.name}: {value!r} is not true or false")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{f.name}: {value!r} is not an integer")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name}: {value!r} is not a number")
            if not math.isfinite(value):
                raise ValueError(f"{f.name}: {value!r} is not a finite number")
        elif kind == "str" and not isinstance(value, str):
            raise ValueError(f"{f.name}: {value!r} is not a string")
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{name}: must be at least 1, got {value}")
        if value <= 0:
            raise ValueError(f"{name}: must be above 0, got {value}")
    for f in fields(config):
        # Layer widths: a typo such as 10**11 must not reach torch, which would try to allocate terabytes.
        if f.name.endswith("hidden") and getattr(config, f.name) > MAX_HIDDEN:
            raise ValueError(f"{f.name}: must be at most {MAX_HIDDEN} units, got {getattr(config, f.name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: must be at least 0, got {getattr(config, name)}")
    for name in unit_open:
        if not 0 < getattr(config, name) < 1:
            raise ValueError(f"{name}: must be between 0 and 1 (exclusive), got {getattr(config, name)}")
    for name in unit_half_open:
        if not 0 < getattr(config, name) <= 1:
            raise ValueError(f"{name}: must be above 0 and at most 1, got {getattr(config, name)}")


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

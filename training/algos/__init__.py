"""Offline MARL algorithms, one readable file each; ``make_algorithm`` builds one by name."""

from __future__ import annotations

from typing import Any

import torch

from training.algos.base import Algorithm, DataInfo

ALGORITHMS = ("bc", "inspo", "icq", "omiga")
# name → (algorithm class, config dataclass) in training/algos/NAME.py, imported on demand.
CONFIGS = {
    "bc": ("BC", "BCConfig"),
    "inspo": ("InSPO", "InSPOConfig"),
    "icq": ("ICQ", "ICQConfig"),
    "omiga": ("OMIGA", "OMIGAConfig"),
}


def config_class(name: str) -> Any:
    """The hyperparameter dataclass of algorithm ``name`` (ValueError for an unknown name)."""
    import importlib

    if name not in CONFIGS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return getattr(importlib.import_module(f"training.algos.{name}"), CONFIGS[name][1])


def make_algorithm(name: str, info: DataInfo, params: dict[str, Any], generator: torch.Generator) -> Algorithm:
    """Instantiate algorithm ``name`` with config overrides ``params`` (unknown keys are an error)."""
    import importlib

    cfg_cls = config_class(name)
    cls = getattr(importlib.import_module(f"training.algos.{name}"), CONFIGS[name][0])
    fields = set(cfg_cls.__dataclass_fields__)
    unknown = set(params) - fields
    if unknown:
        raise ValueError(f"{name}: unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
    algo: Algorithm = cls(cfg_cls(**params), info, generator)
    return algo

"""Offline MARL algorithms, one readable file each; ``make_algorithm`` builds one by name."""

from __future__ import annotations

from typing import Any

import torch

from training.algos.base import Algorithm, DataInfo

ALGORITHMS = ("bc", "inspo", "icq", "omiga")


def make_algorithm(name: str, info: DataInfo, params: dict[str, Any], generator: torch.Generator) -> Algorithm:
    """Instantiate algorithm ``name`` with config overrides ``params`` (unknown keys are an error)."""
    import importlib

    modules = {
        "bc": ("BC", "BCConfig"),
        "inspo": ("InSPO", "InSPOConfig"),
        "icq": ("ICQ", "ICQConfig"),
        "omiga": ("OMIGA", "OMIGAConfig"),
    }
    table: dict[str, Any] = {}
    for key, (cls_name, cfg_name) in modules.items():
        if key == name:
            mod = importlib.import_module(f"training.algos.{key}")
            table[key] = (getattr(mod, cls_name), getattr(mod, cfg_name))
    if name not in table:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    cls, cfg_cls = table[name]
    fields = set(cfg_cls.__dataclass_fields__)
    unknown = set(params) - fields
    if unknown:
        raise ValueError(f"{name}: unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
    algo: Algorithm = cls(cfg_cls(**params), info, generator)
    return algo

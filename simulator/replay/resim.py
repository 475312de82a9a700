"""Counterfactual re-simulation: each historical day (its orders and couriers) run again under the policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dispatch.policy import Policy
from simulator.ab.stats import DAY_METRICS, paired
from simulator.engine import SimConfig
from simulator.replay.days import ReplayDay
from simulator.run import run_episode


def resim_day(day: ReplayDay, policy: Policy, resolver: Callable[[str], Policy]) -> dict[str, Any]:
    """The policy's MDRP metrics on the day next to the logged ones."""
    logged = day.logged_metrics(resolver)
    res = run_episode(day.instance(), policy, seed=day.seed, config=SimConfig(day.interval))
    return {
        "day": day.key,
        "name": day.name,
        "logged": logged,
        "policy": {m: res.metrics[m] for m in logged},
        "epochs": res.epochs,
    }


def summarise(days: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Mean logged vs policy metrics and the paired difference (policy − logged) with intervals."""
    out = {}
    for m in DAY_METRICS:
        a = np.array([d["logged"][m] for d in days], dtype=np.float64)
        b = np.array([d["policy"][m] for d in days], dtype=np.float64)
        out[m] = paired(m, a, b, seed=seed).to_dict()
    return {"days": len(days), "metrics": out}

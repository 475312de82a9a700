"""Historical days to replay: logged days (from a log dataset) and MDRP instance days.

A logged day carries its snapshots, its actions, its seed and its outcomes. An MDRP instance is a
real day without a dispatch log: its "logged" actions and outcomes are those of a baseline policy
simulated on it (``--baseline``, ``reyes`` by default), so shadow and counterfactual replay work on
any of the 240 public instances too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dispatch.policy import Policy
from dispatch.snapshot import JointAction, Snapshot
from simulator.engine import Engine, SimConfig
from simulator.epochs import DEFAULT_INTERVAL
from simulator.instance import Instance
from simulator.logs.dataset import LogDataset, LoggedDay
from simulator.logs.schema import EPISODE_METRICS


@dataclass
class ReplayDay:
    """One historical day: from a log (``logged``) or an instance driven by a baseline policy."""

    key: str
    name: str
    seed: int
    interval: int
    logged: LoggedDay | None = None
    instance_spec: str | None = None
    baseline: str | None = None

    def instance(self) -> Instance:
        """The day's orders, restaurants and couriers."""
        if self.logged is not None:
            return self.logged.instance()
        from simulator.sources import load_spec

        assert self.instance_spec is not None
        return load_spec(self.instance_spec)

    def decisions(self, resolver: Callable[[str], Policy]) -> Iterator[tuple[Snapshot, JointAction]]:
        """Every decision of the day in order: the snapshot and the action taken ("logged")."""
        if self.logged is not None:
            for d in self.logged.decisions():
                yield d.snapshot, d.action
            return
        assert self.baseline is not None
        engine = Engine(self.instance(), SimConfig(self.interval))
        policy = resolver(self.baseline)
        policy.reset(self.seed)
        while not engine.done:
            snap = engine.snapshot()
            action = policy.decide(snap).action
            yield snap, action
            engine.step(action)

    def logged_metrics(self, resolver: Callable[[str], Policy]) -> dict[str, float]:
        """The MDRP metrics of what happened that day (the log's, or the baseline's run)."""
        if self.logged is not None:
            return {m: float(self.logged.info[m]) for m in EPISODE_METRICS}
        from simulator.run import run_episode

        assert self.baseline is not None
        res = run_episode(self.instance(), resolver(self.baseline), seed=self.seed, config=SimConfig(self.interval))
        return {m: res.metrics[m] for m in EPISODE_METRICS}


def epoch_spacing(day: LoggedDay) -> int | None:
    """Minutes between a logged day's decision epochs (the smallest step; None for a day of one epoch)."""
    steps = np.diff(np.asarray(day.tables["epochs"]["time"], dtype=np.int64))
    steps = steps[steps > 0]
    return int(steps.min()) if steps.size else None


def log_days(folder: str | Path) -> list[ReplayDay]:
    """Every day of a log dataset, each replayed at the cadence it was logged at.

    That is the manifest's ``args.sim.dispatch_interval``; a log that does not record it (the format allows
    that) is read off its epochs' times instead, since a default has changed before (2 minutes, then 1).
    """
    ds = LogDataset(folder)
    ds.warn_if_unfinished()
    recorded = ds.dispatch_interval
    out = []
    for ep in ds.episodes:
        day = ds.day(ep)
        interval = recorded if recorded is not None else epoch_spacing(day) or DEFAULT_INTERVAL
        out.append(ReplayDay(f"log-{ep:06d}", str(day.info["instance"]), int(day.info["seed"]), interval, day))
    return out


def instance_days(specs: list[str], baseline: str, interval: int = DEFAULT_INTERVAL, seed: int = 0) -> list[ReplayDay]:
    """MDRP instance days, their history played by ``baseline``."""
    import re

    return [
        ReplayDay(f"inst-{re.sub(r'[^A-Za-z0-9._-]+', '_', s)}", s, seed, interval, None, s, baseline) for s in specs
    ]

"""Run a policy over a whole day and collect records and metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dispatch.policy import Decision, Policy
from dispatch.snapshot import Snapshot
from simulator import metrics
from simulator.engine import Engine, EpisodeRecords, RewardConfig, SimConfig, StepOutcome
from simulator.instance import Instance

DecisionHook = Callable[[Snapshot, Decision, StepOutcome], None]


@dataclass
class EpisodeResult:
    """A finished day: what was executed, its metrics and its total shared reward."""

    records: EpisodeRecords
    metrics: dict[str, float]
    total_reward: float
    epochs: int


def outcome(records: EpisodeRecords) -> metrics.Outcome:
    """The metric inputs of engine records."""
    return metrics.Outcome(
        order_pickup=records.order_pickup,
        order_dropoff=records.order_dropoff,
        order_courier=records.order_courier,
        courier_work=records.courier_work,
        bundle_courier=np.array([a.courier for a in records.assignments], dtype=np.int64),
        bundle_size=np.array([len(a.orders) for a in records.assignments], dtype=np.int64),
    )


def run_episode(
    instance: Instance,
    policy: Policy,
    seed: int = 0,
    config: SimConfig | None = None,
    reward: RewardConfig | None = None,
    on_decision: DecisionHook | None = None,
) -> EpisodeResult:
    """Simulate one day under ``policy``; ``on_decision`` sees every epoch (used for logging)."""
    engine = Engine(instance, config, reward)
    policy.reset(seed)
    total, epochs = 0.0, 0
    while not engine.done:
        snap = engine.snapshot()
        decision = policy.decide(snap)
        result = engine.step(decision.action)
        total += result.reward
        epochs += 1
        if on_decision is not None:
            on_decision(snap, decision, result)
    return EpisodeResult(engine.records, metrics.compute(instance, outcome(engine.records)), total, epochs)

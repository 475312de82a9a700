"""Common random numbers: one seeded stream per (replicate seed, purpose, entity).

Both arms of an A/B face exactly the same day. A cell is (instance, replicate seed); the day of a
cell is the instance itself for replicate 0 and a seeded perturbation of it for replicates >= 1:

- preparation time of each order is scaled by ``exp(prep_sigma·z)``, z ~ N(0, 1) drawn from the
  stream keyed by (seed, "preparation", order id) — so adding or removing one order does not
  shift the noise of any other;
- the day's travel speed (metres per minute) is scaled by ``exp(speed_sigma·z)`` from the stream
  keyed by (seed, "speed") (the engine has one speed per day: traffic or weather of that day).

Each arm's own stochastic choices come from its policy stream, reset with ``policy_seed(instance,
seed)``: the same for both arms, so two identical stochastic policies make identical choices.
With ``--noise 0`` (or a single replicate) the days are the instances exactly as published.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from simulator.instance import Instance

PURPOSES: dict[str, int] = {"preparation": 1, "speed": 2, "policy": 3}
CRN_STREAM = 0xAB


@dataclass(frozen=True)
class NoiseConfig:
    """How strongly replicates >= 1 perturb a day (log-normal sigmas); zeros switch noise off."""

    prep_sigma: float = 0.15
    speed_sigma: float = 0.05

    @property
    def off(self) -> bool:
        """True when no replicate is perturbed."""
        return self.prep_sigma == 0 and self.speed_sigma == 0

    def scaled(self, factor: float) -> NoiseConfig:
        """Both sigmas times ``factor`` (``--noise``)."""
        return NoiseConfig(self.prep_sigma * factor, self.speed_sigma * factor)


def entity_key(name: str) -> int:
    """A stable 32-bit key of an entity id (orders, instances); stable across processes and runs."""
    return zlib.crc32(name.encode("utf-8"))


def stream(seed: int, purpose: str, entity: str = "") -> np.random.Generator:
    """The random stream of one (seed, purpose, entity)."""
    return np.random.default_rng(np.random.SeedSequence([CRN_STREAM, seed, PURPOSES[purpose], entity_key(entity)]))


def policy_seed(instance: str, seed: int) -> int:
    """The seed both arms reset their policy with on one cell."""
    return int(stream(seed, "policy", instance).integers(0, 2**31 - 1))


def perturb(inst: Instance, seed: int, noise: NoiseConfig) -> Instance:
    """The day of replicate ``seed``: the instance itself for seed 0 or no noise, else perturbed."""
    if seed == 0 or noise.off:
        return inst
    prep = (inst.order_ready - inst.order_placement).astype(np.float64)
    z = np.array([stream(seed, "preparation", oid).standard_normal() for oid in inst.order_ids])
    ready = inst.order_placement + np.maximum(np.round(prep * np.exp(noise.prep_sigma * z)), 0).astype(np.int64)
    speed = float(np.exp(noise.speed_sigma * stream(seed, "speed").standard_normal()))
    params = dataclasses.replace(inst.params, meters_per_minute=inst.params.meters_per_minute * speed)
    meta = {**inst.meta, "crn_seed": str(seed)}
    return dataclasses.replace(inst, order_ready=ready.astype(np.int64), params=params, meta=meta)

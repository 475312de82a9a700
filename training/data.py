"""Data sources for ``dispatch train --data``: ``GAME:DATASET`` for the benchmark games.

A source bundles the offline dataset, its discount and an evaluator of learned policies. Further kinds
(dispatch logs given as a path) plug in through :data:`RESOLVERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.games import PolicyFn, available_games, load_game
from training.offline.dataset import OfflineDataset


@dataclass
class DataSource:
    """A dataset plus how to score a policy trained on it."""

    name: str
    dataset: OfflineDataset
    gamma: float
    evaluate: Callable[[PolicyFn, int], dict[str, float]]
    reward_scale: float | None = None  # training divides rewards by this; None: max |r| of the data


def game_source(spec: str, seed: int) -> DataSource | None:
    """``GAME:DATASET`` (e.g. ``xor:ab_ba``) when GAME is a known game; None otherwise."""
    if ":" not in spec:
        return None
    game_name, ds_name = spec.split(":", 1)
    if game_name not in available_games():
        return None
    game = load_game(game_name)
    dataset = game.dataset(ds_name, seed)

    def evaluate(policy: PolicyFn, eval_seed: int) -> dict[str, float]:
        return game.evaluate(policy, dataset, eval_seed)

    scale = getattr(game, "spec", {}).get("reward_scale")
    return DataSource(
        name=spec,
        dataset=dataset,
        gamma=game.gamma,
        evaluate=evaluate,
        reward_scale=None if scale is None else float(scale),
    )


# Tried in order; the first that recognises the spec wins.
RESOLVERS: list[Callable[[str, int], DataSource | None]] = [game_source]


def resolve_data(spec: str, seed: int = 0) -> DataSource:
    """Turn a ``--data`` argument into a :class:`DataSource`."""
    for resolver in RESOLVERS:
        source = resolver(spec, seed)
        if source is not None:
            return source
    raise ValueError(f"--data {spec!r}: expected GAME:DATASET with GAME in {available_games()}")


def reward_scale(source: DataSource) -> float:
    """The divisor applied to rewards for training: the source's own, else max |r| of its data."""
    return source.reward_scale if source.reward_scale is not None else max_abs_reward(source.dataset)


def max_abs_reward(dataset: OfflineDataset) -> float:
    """max |r| over the logged steps (rewards are divided by it for training); 1 if all zero."""
    r = np.abs(dataset.rewards[dataset.filled])
    return float(r.max()) if r.size and r.max() > 0 else 1.0

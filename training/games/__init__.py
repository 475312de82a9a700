"""Benchmark games: a game is a declarative spec file under ``specs/``, not new code.

``load_game("xor")`` reads ``specs/xor.json``; ``game.dataset("ab_ba", seed)`` builds the offline
dataset and ``game.evaluate(policy, dataset, seed)`` scores a learned joint policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from training.offline.dataset import OfflineDataset

SPEC_DIR = Path(__file__).parent / "specs"
SPEC_FORMAT_VERSION = 1


class PolicyFn(Protocol):
    """Maps observations [B, N, O] and legal masks [B, N, A] to action probabilities [B, N, A]."""

    def __call__(self, obs: np.ndarray, legal: np.ndarray) -> np.ndarray: ...


class Game(Protocol):
    """A benchmark game: builds datasets from its spec and evaluates joint policies."""

    name: str
    gamma: float

    def dataset_names(self) -> list[str]: ...

    def dataset(self, name: str, seed: int) -> OfflineDataset: ...

    def evaluate(self, policy: PolicyFn, dataset: OfflineDataset, seed: int) -> dict[str, float]: ...


def available_games() -> list[str]:
    """Names of the games whose spec files ship with the package."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.json"))


def load_spec(name_or_path: str) -> dict[str, Any]:
    """Read a game spec by name (``specs/NAME.json``) or by path; checks its format version."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPEC_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise ValueError(f"unknown game {name_or_path!r}; known: {', '.join(available_games())}")
    spec: dict[str, Any] = json.loads(path.read_text())
    if spec.get("format_version") != SPEC_FORMAT_VERSION:
        raise ValueError(f"{path}: spec format_version {spec.get('format_version')}, expected 1")
    return spec


def load_game(name_or_path: str) -> Game:
    """Instantiate the game described by a spec."""
    spec = load_spec(name_or_path)
    kind = spec.get("kind")
    if kind == "matrix":
        from training.games.matrix import MatrixGame

        return MatrixGame(spec)
    if kind == "bridge":
        from training.games.bridge import BridgeGame

        return BridgeGame(spec)
    raise ValueError(f"game spec kind {kind!r} is not supported")

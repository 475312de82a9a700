"""Heuristic dispatchers, all built on the shared decision path (candidates → scores → assembly)."""

from __future__ import annotations

from collections.abc import Callable

from dispatch.policy import Policy

NAMES = ("random", "nearest", "assignment", "reyes")


def make(name: str, **kwargs: object) -> Policy:
    """A heuristic policy by name; ValueError lists the known names."""
    from simulator.heuristics import basic, reyes

    factories: dict[str, Callable[..., Policy]] = {
        "random": basic.RandomPolicy,
        "nearest": basic.NearestPolicy,
        "assignment": basic.AssignmentPolicy,
        "reyes": reyes.ReyesPolicy,
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; heuristics are {', '.join(NAMES)}")
    return factories[name](**kwargs)

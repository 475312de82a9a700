"""Shadow replay: every historical decision's snapshot goes to the policy; its answer is compared.

Nothing is executed: the policy sees exactly the snapshots the logged dispatcher saw. Agreement is
measured on assignments as courier → order-id tuples (so two candidate sets that index orders
differently still compare), per available courier and per decision (joint: every courier agrees).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dispatch.policy import Policy
from dispatch.snapshot import InfeasibleActionError
from simulator.replay.days import ReplayDay

PACES = ("fast", "recorded")


class ReplayStopped(RuntimeError):
    """The policy (or its endpoint) failed; the message names the day and the decision."""


@dataclass(frozen=True)
class ShadowConfig:
    """Pace and error tolerance of a shadow replay."""

    pace: str = "fast"
    # Recorded pace sends decision e at (t_e - t_0) minutes × 60 / speedup seconds after the first.
    speedup: float = 1.0
    # Decisions that may fail (their errors are reported) before the replay stops.
    max_errors: int = 0
    top: int = 10


def shadow_day(day: ReplayDay, policy: Policy, resolver: Callable[[str], Policy], cfg: ShadowConfig) -> dict[str, Any]:
    """Shadow one day; ReplayStopped when more than ``max_errors`` decisions fail."""
    policy.reset(day.seed)
    decisions = agents = agree_agents = agree_joint = 0
    latency: list[float] = []
    errors: list[dict[str, Any]] = []
    infeasible: list[dict[str, Any]] = []
    worst: list[tuple[int, int, dict[str, Any]]] = []
    wall0 = time.perf_counter()
    t0: int | None = None
    for epoch, (snap, logged) in enumerate(day.decisions(resolver)):
        if cfg.pace == "recorded":
            t0 = snap.time if t0 is None else t0
            delay = wall0 + (snap.time - t0) * 60.0 / cfg.speedup - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        start = time.perf_counter()
        try:
            out = policy.decide(snap)
        except Exception as exc:  # a failing policy or endpoint is reported, then stops the replay
            errors.append({"epoch": epoch, "time": snap.time, "error": f"{type(exc).__name__}: {exc}"})
            if len(errors) > cfg.max_errors:
                raise ReplayStopped(
                    f"day {day.name} ({day.key}): the policy failed at decision {epoch} (t={snap.time}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            continue
        latency.append(1000.0 * (time.perf_counter() - start))
        try:
            out.action.check(snap)
        except InfeasibleActionError as exc:
            infeasible.append({"epoch": epoch, "time": snap.time, "error": str(exc)})
        lo, po = logged.to_ids(snap), out.action.to_ids(snap)
        avail = [snap.courier_ids[c] for c in np.flatnonzero(snap.available())]
        differ = {c: {"logged": list(lo.get(c, ())), "policy": list(po.get(c, ()))} for c in avail}
        differ = {c: v for c, v in differ.items() if v["logged"] != v["policy"]}
        decisions += 1
        agents += len(avail)
        agree_agents += len(avail) - len(differ)
        agree_joint += int(lo == po)
        if differ:
            item = {
                "day": day.name,
                "epoch": epoch,
                "time": snap.time,
                "agents": len(avail),
                "differ": len(differ),
                "couriers": dict(list(differ.items())[:8]),
            }
            # A min-heap of the `top` decisions with the most disagreeing couriers.
            heapq.heappush(worst, (len(differ), -epoch, item))
            if len(worst) > cfg.top:
                heapq.heappop(worst)
    return {
        "day": day.key,
        "name": day.name,
        "decisions": decisions,
        "agents": agents,
        "agree_agents": agree_agents,
        "agree_joint": agree_joint,
        "latency_ms": latency,
        "errors": errors,
        "infeasible": infeasible,
        "worst": [w[2] for w in sorted(worst, reverse=True)],
    }


def summarise(days: list[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """Agreement, latency distribution, errors and the most different decisions over all days."""
    lat = np.concatenate([np.asarray(d["latency_ms"], dtype=np.float64) for d in days]) if days else np.zeros(0)
    n_dec = sum(d["decisions"] for d in days)
    n_ag = sum(d["agents"] for d in days)
    q = np.percentile(lat, [50, 90, 99]) if lat.size else [float("nan")] * 3
    worst = sorted((w for d in days for w in d["worst"]), key=lambda w: (-w["differ"], w["day"], w["epoch"]))
    return {
        "days": len(days),
        "decisions": n_dec,
        "agent_decisions": n_ag,
        "per_courier_agreement": sum(d["agree_agents"] for d in days) / n_ag if n_ag else float("nan"),
        "joint_agreement": sum(d["agree_joint"] for d in days) / n_dec if n_dec else float("nan"),
        "latency_ms": {
            "mean": float(lat.mean()) if lat.size else float("nan"),
            "p50": float(q[0]),
            "p90": float(q[1]),
            "p99": float(q[2]),
            "max": float(lat.max()) if lat.size else float("nan"),
        },
        "errors": [dict(e, day=d["name"]) for d in days for e in d["errors"]],
        "infeasible": sum(len(d["infeasible"]) for d in days),
        "infeasible_examples": [dict(e, day=d["name"]) for d in days for e in d["infeasible"]][:10],
        "worst": worst[:top],
    }

"""What a lookahead costs at decision time: ``OnnxPolicy.decide`` with and without soon-free agents.

A model exported with ``lookahead`` L also scores the couriers free within L minutes, so each decision
encodes and scores more agents. This times ``decide`` (candidates, features, ONNX Runtime on one
thread, ``mass`` assembly) over real mid-day snapshots of an MDRP day (taken while ``reyes``
dispatches it), for the same exported scorer network (hidden 64, seeded weights) with each lookahead.
Usage: ``python -m bench.lookahead``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Print one Markdown row per lookahead."""
    ap = argparse.ArgumentParser(prog="python -m bench.lookahead", description=__doc__)
    ap.add_argument("--instance", default="5r50t100s2p125", help="MDRP day to take snapshots from")
    ap.add_argument("--lookahead", type=int, nargs="+", default=[0, 15], help="minutes (default 0 15)")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the snapshots (default 3)")
    args = ap.parse_args(argv)

    import torch

    from dispatch.candidates import CandidateConfig
    from dispatch.onnx_policy import OnnxPolicy
    from simulator.engine import Engine
    from simulator.heuristics.reyes import ReyesPolicy
    from simulator.sources import load_spec
    from training.dispatch.export import export
    from training.dispatch.nets import Scorer

    engine, reyes = Engine(load_spec(args.instance)), ReyesPolicy()
    snaps = []
    while not engine.done:
        snap = engine.snapshot()
        snaps.append(snap)
        engine.step(reyes.decide(snap).action)
    snaps = snaps[len(snaps) // 4 : 3 * len(snaps) // 4]  # the busy middle of the day
    couriers = np.mean([s.n_couriers for s in snaps])
    orders = np.mean([s.n_orders for s in snaps])
    print(f"{len(snaps)} mid-day snapshots of {args.instance}: {couriers:.0f} couriers, {orders:.0f} open orders")
    print("| lookahead (min) | agents per decision | decide p50 ms | decide p99 ms |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.lookahead:
            torch.manual_seed(0)
            config = CandidateConfig(lookahead=minutes)
            path = export(Scorer(), Path(tmp) / f"l{minutes}.onnx", "bench", "1", config, conflict_rule="mass")
            policy = OnnxPolicy(path, threads=1)
            for snap in snaps[:20]:  # warm-up: numba kernels, ONNX Runtime
                policy.decide(snap)
            times, agents = [], []
            for _ in range(args.repeats):
                for snap in snaps:
                    start = time.perf_counter()
                    decision = policy.decide(snap)
                    times.append((time.perf_counter() - start) * 1000)
                    agents.append(decision.candidates.n_agents if decision.candidates is not None else 0)
            p50, p99 = np.percentile(times, [50, 99])
            print(f"| {minutes} | {np.mean(agents):.1f} | {p50:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m simulator.heuristics.tune``: grid-search ``reyes`` parameters on the tuning instances.

Tuning uses instance seeds 0–5 only (default: 36 instances, six variants of each base day, spanning
sizes, travel, schedules and preparation). Prints mean click-to-door and % undelivered per grid
point. Example: ``python -m simulator.heuristics.tune --grid '{"lookahead": [15, 20], "theta": [1.0]}'``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np

from simulator.batch import Task, run_many

VARIANTS = ("o100t100s1p125", "o50t100s1p100", "r50t75s2p125", "o50t75s1p125", "r50t100s1p100", "o100t75s2p100")
TUNING_SET = tuple(f"{seed}{v}" for seed in range(6) for v in VARIANTS)


def main(argv: list[str] | None = None) -> int:
    """Run the grid and print one line per point."""
    ap = argparse.ArgumentParser(prog="python -m simulator.heuristics.tune", description=__doc__)
    ap.add_argument("--grid", required=True, help="JSON object: parameter name -> list of values")
    ap.add_argument("--instances", default=",".join(TUNING_SET), help="comma-separated instances (seeds 0-5 only)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    grid = json.loads(args.grid)
    instances = args.instances.split(",")
    held_out = [i for i in instances if i[:1] in "6789"]
    if held_out:
        print(f"refusing to tune on held-out instances (seeds 6-9): {held_out}", file=sys.stderr)
        return 2
    for combo in itertools.product(*grid.values()):
        opts = tuple(zip(grid, combo, strict=True))
        res = run_many([Task(i, "reyes", options=opts) for i in instances], jobs=args.jobs, progress=False)
        ctd = np.mean([r.metrics["ctd_mean"] for r in res])
        und = np.mean([r.metrics["undelivered_pct"] for r in res])
        print(f"{dict(opts)}  CtD {ctd:.3f}  undelivered {und:.3f}%  ({len(res)} instances)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Simulator benchmark: one full day of 7o100t100s1p100 (3213 orders, 404 couriers) per policy.

Each run is a fresh subprocess so peak RSS is that run's alone; wall time covers the simulation only
(loading excluded). Prints a Markdown table for BENCHMARKS.md. Usage: ``python -m bench.simulate``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

from simulator.epochs import add_interval_option

CHILD = """
import json, resource, time, sys
from simulator.instance import load
from simulator.heuristics import make
from simulator.engine import SimConfig
from simulator.run import run_episode
inst = load(sys.argv[1])
t = time.perf_counter()
r = run_episode(inst, make(sys.argv[2]), config=SimConfig(dispatch_interval=int(sys.argv[3])))
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "rss_mb": rss, "epochs": r.epochs, "ctd": r.metrics["ctd_mean"],
                  "undelivered": r.metrics["undelivered_pct"]}))
"""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__)
    ap.add_argument("--instance", default="7o100t100s1p100")
    ap.add_argument("--policies", default="nearest,reyes")
    ap.add_argument("--repeat", type=int, default=3, help="runs per policy; the best wall time is reported")
    add_interval_option(ap, "the tables before 2026-12-07 used 2")
    args = ap.parse_args(argv)
    machine = platform.processor() or platform.machine()
    print(
        f"instance {args.instance}; decisions every {args.interval} min; python {platform.python_version()}; {machine}"
    )
    print(f"| policy | wall s (best of {args.repeat}) | peak RSS MiB | epochs | CtD mean | undelivered % |")
    print("|---|---|---|---|---|---|")
    for pol in args.policies.split(","):
        runs = []
        for _ in range(args.repeat):
            # taskset pins the child to one core: the target is stated for one core.
            cmd = [sys.executable, "-c", CHILD, args.instance, pol, str(args.interval)]
            try:
                out = subprocess.run(["taskset", "-c", "0", *cmd], capture_output=True, text=True, check=True)
            except FileNotFoundError:
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["wall"])
        print(
            f"| {pol} | {best['wall']:.2f} | {max(r['rss_mb'] for r in runs):.0f} | {best['epochs']} | "
            f"{best['ctd']:.2f} | {best['undelivered']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

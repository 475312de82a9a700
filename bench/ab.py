"""A/B and replay throughput: simulated instance-days per minute with 2 worker processes.

A/B: ``nearest`` vs ``reyes`` on the o50 instances of base days 0–7 (two variants each) × 2 replicate
seeds, a fresh output folder each run, report included. Replay: shadow and re-simulation of a
nearest-noisy log of 4 days through ``reyes``. Prints a Markdown table for BENCHMARKS.md.
Usage: ``python -m bench.ab [--jobs 2]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes for the A/B (default 2)")
    ap.add_argument("--bases", type=int, default=8, help="base days 0..N-1 (two o50 variants each; default 8)")
    ap.add_argument("--seeds", type=int, default=2, help="replicate seeds per instance (default 2)")
    args = ap.parse_args(argv)

    from simulator.ab.run import ABConfig, run_ab
    from simulator.logs.generate import generate
    from simulator.replay.days import log_days
    from simulator.replay.run import ReplayConfig, run_replay

    instances = tuple(f"{b}{v}" for b in range(args.bases) for v in ("o50t75s2p100", "o50t100s1p100"))
    print(f"python {platform.python_version()}; {platform.processor() or platform.machine()}; jobs {args.jobs}")
    print("| workload | days | wall s | instance-days / min |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        config = ABConfig("nearest", "reyes", instances, seeds=args.seeds)
        start = time.perf_counter()
        run = run_ab(config, Path(tmp) / "ab", jobs=args.jobs, progress=False)
        wall = time.perf_counter() - start
        assert run.complete
        print(
            f"| A/B nearest vs reyes, {len(instances)} o50 instances × {args.seeds} seeds × 2 arms, with report "
            f"| {run.total} | {wall:.1f} | {60 * run.total / wall:.1f} |"
        )
        logs = Path(tmp) / "logs"
        generate(logs, "nearest-noisy", list(instances[:4]), days=1, seed=0, jobs=args.jobs, progress=False)
        days = log_days(logs)
        for mode in ("shadow", "resim"):
            start = time.perf_counter()
            rep = run_replay(ReplayConfig("reyes", (mode,)), days, Path(tmp) / mode, progress=False)
            wall = time.perf_counter() - start
            assert rep.complete
            print(
                f"| replay {mode} through reyes (one process), {len(days)} logged days | {len(days)} | {wall:.1f} "
                f"| {60 * len(days) / wall:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

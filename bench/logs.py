"""Log-writing benchmark: courier-decisions logged per second and bytes on disk per decision.

Generates a dataset of one recipe over a few instances (one worker process, so the rate is per core)
and reports the end-to-end rate (simulation + behaviour policy + encoding to Parquet) and the size.
Usage: ``python -m bench.logs [--recipe mixed] [--instances ...] [--days N]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simulator.logs.dataset import LogDataset
from simulator.logs.generate import generate


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table row per recipe."""
    ap = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__)
    ap.add_argument("--recipes", default="reyes-soft,nearest-noisy,random")
    ap.add_argument("--instances", default="3o50t100s1p100,7o100t100s1p100")
    ap.add_argument("--days", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"instances {args.instances}; {args.days} day(s) each; 1 worker process")
    print(
        "| recipe | days | decision epochs | courier-decisions | wall s | courier-decisions/s | bytes on disk "
        "| bytes per courier-decision |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes.split(","):
        folder = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        try:
            t = time.perf_counter()
            generate(folder, recipe, args.instances.split(","), args.days, jobs=1, progress=False)
            wall = time.perf_counter() - t
            ds = LogDataset(folder)
            rows = int(np.sum(np.asarray(ds.table("couriers").column("agent")) >= 0))
            epochs = ds.table("epochs").num_rows
            size = sum(p.stat().st_size for p in folder.rglob("*.parquet"))
            print(
                f"| {recipe} | {len(ds.episodes)} | {epochs} | {rows} | {wall:.1f} | {rows / wall:,.0f} | "
                f"{size:,} | {size / max(rows, 1):.1f} |"
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

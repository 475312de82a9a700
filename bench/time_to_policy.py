"""Time to a usable dispatch policy: train BC and InSPO on 2 CPU cores, evaluate checkpoints as they come.

"Usable" is measured, not assumed: the exported policy (ONNX, the export default rule) is at least as good on
click-to-door with every lost order charged at 90 minutes, averaged over the evaluation instances, as the bar:
``reyes`` under the default ``plan`` rule (the plan without the model's scores is ``reyes``, so a model is
worth serving only once it beats that), else ``assignment`` (the better of the two simple heuristics in the
logs; beating ``nearest`` would be no bar, since an untrained scorer's ``mass`` rule already hands each
courier its earliest-pickup candidate). The evaluation instances are training-seed instances (seeds 2-5;
never the held-out seeds 6-9).
Training runs in chunks with ``stop_after`` and resumes bit-identically, so a chunked run is the
uninterrupted one. The logs are encoded once before any timing (reported apart), so training seconds
count training only (each chunk's reload of the cached encoding included); evaluation is reported apart.

Usage: ``python -m bench.time_to_policy [--logs DIR] [--checkpoints 250,500,1000,2000,3000]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EVAL_INSTANCES = ("[2-5]o50t*s1p100", "[2-5]r50t*s2p125")
TRAIN_INSTANCES = ("[0-5]o50*", "[0-5]r50*")


def _mean_metrics(spec: str, instances: list[str], jobs: int) -> tuple[float, float, float]:
    """Mean CtD, % undelivered and CtD with lost orders charged at 90 min, over ``instances``."""
    from simulator.batch import Task, run_many
    from simulator.results import charged_ctd

    res = run_many([Task(i, spec) for i in instances], jobs=jobs, progress=False)
    return (
        float(np.nanmean([r.metrics["ctd_mean"] for r in res])),
        float(np.mean([r.metrics["undelivered_pct"] for r in res])),
        float(np.mean([charged_ctd(r.metrics, 90) for r in res])),
    )


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate at each checkpoint, print a Markdown table."""
    ap = argparse.ArgumentParser(prog="python -m bench.time_to_policy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", type=Path, help="a mixed log dataset (default: log seeds 0-5 o50/r50 now)")
    ap.add_argument("--checkpoints", default="250,500,1000,2000,3000", help="steps at which to evaluate")
    ap.add_argument("--algos", default="bc,inspo", help="algorithms, comma-separated")
    ap.add_argument("--jobs", type=int, default=2, help="evaluation processes (default 2)")
    args = ap.parse_args(argv)
    from dispatch.assemble import PLAN_RULE
    from simulator.instance import list_instances
    from simulator.logs.generate import generate
    from simulator.logs.view import load as load_view
    from training.dispatch.export import DEFAULT_RULE, export_run
    from training.dispatch.train import DispatchTrainConfig, train

    steps = sorted({int(s) for s in args.checkpoints.split(",") if s.strip()})
    instances = sorted({n for p in EVAL_INSTANCES for n in list_instances(p)})
    tmp = Path(tempfile.mkdtemp(prefix="bench-ttp-"))
    logs = args.logs
    if logs is None:
        logs = tmp / "logs"
        t = time.perf_counter()
        names = sorted({n for p in TRAIN_INSTANCES for n in list_instances(p)})
        generate(logs, "mixed", names, days=1, jobs=args.jobs, progress=False)
        print(f"logged {len(names)} mixed days in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(f"| policy ({len(instances)} training-seed instances) | CtD | undelivered % | charged CtD |")
    print("|---|---:|---:|---:|")
    t = time.perf_counter()
    load_view(logs)  # encode and cache the training view now, outside every algorithm's clock
    print(f"encoded the logs for training in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    heuristics = {name: _mean_metrics(name, instances, args.jobs) for name in ("nearest", "assignment", "reyes")}
    for name, (ctd, lost, charged) in heuristics.items():
        print(f"| {name} | {ctd:.2f} | {lost:.2f} | {charged:.2f} |")
    bar = heuristics["reyes" if DEFAULT_RULE == PLAN_RULE else "assignment"][2]
    print("\n| algorithm | steps | training s (cumulative) | CtD | undelivered % | charged CtD | usable | eval s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for algo in [a for a in args.algos.split(",") if a]:
        trained = 0.0
        first = None
        for s in steps:
            cfg = DispatchTrainConfig(
                data=str(logs),
                algo=algo,
                steps=steps[-1],
                batch_size=32,  # the `make results-dispatch` protocol, as every recorded figure used
                stop_after=s,
                resume=True,
                out=str(tmp / algo),
                progress=False,
            )
            t = time.perf_counter()
            train(cfg)
            trained += time.perf_counter() - t
            model, _ = export_run(tmp / algo, tmp / f"{algo}-{s}.onnx")
            t = time.perf_counter()
            ctd, lost, charged = _mean_metrics(str(model), instances, args.jobs)
            usable = charged <= bar
            if usable and first is None:
                first = trained
            print(
                f"| {algo} | {s} | {trained:.0f} | {ctd:.2f} | {lost:.2f} | {charged:.2f} | "
                f"{'yes' if usable else 'no'} | {time.perf_counter() - t:.0f} |",
                flush=True,
            )
        print(f"\n{algo}: usable after {first:.0f} s of training" if first is not None else f"\n{algo}: not usable")
    return 0


if __name__ == "__main__":
    sys.exit(main())

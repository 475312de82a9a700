"""``dispatch ab`` and ``dispatch replay``: the operators' tools (handlers import lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

POLICY_HELP = (
    "a heuristic (nearest, reyes, ...), a behaviour recipe (reyes-soft, ...; add :greedy), "
    "a path to an .onnx model, or grpc://host:port[/model]"
)


def register(sub: Any) -> None:
    """Add ``ab`` and ``replay`` to the ``dispatch`` parser."""
    p = sub.add_parser(
        "ab",
        help="A/B two policies in the simulator with common random numbers and a paired report",
        description=(
            "Simulate every instance × replicate seed under policy A and policy B on exactly the same day "
            "(common random numbers), then compare them metric by metric with paired statistics (t and "
            "bootstrap intervals, effect size, Holm-corrected p-values). Writes OUT/report.md (+ PNG plots) "
            "and OUT/report.json once every day is done; a stopped run resumes when rerun with the same arguments."
        ),
    )
    p.add_argument("--a", required=True, metavar="POLICY", help=f"arm A: {POLICY_HELP}")
    p.add_argument("--b", required=True, metavar="POLICY", help=f"arm B: {POLICY_HELP}")
    p.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="SPEC|GLOB",
        help="instances: names, globs ('seed0/*', '*o50*'), paths, synthetic:SEED or synthetic:A-B (repeatable)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="replicate seeds per instance (default 1); seed 0 is the day as published, seeds >= 1 perturb it",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="scale of the replicate perturbation (default 1: preparation σ=0.15, speed σ=0.05; 0: off)",
    )
    p.add_argument("--interval", type=int, default=2, help="minutes between decision epochs (default 2)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for Holm (default 0.05)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--out", type=Path, required=True, help="report folder (created, or resumed)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=ab)


def ab(args: argparse.Namespace) -> int:
    """Run or resume an A/B and print the verdicts."""
    from simulator.ab.crn import NoiseConfig
    from simulator.ab.run import ABConfig, ABError, run_ab
    from simulator.batch import default_jobs
    from simulator.instance import InstanceError
    from simulator.policies import PolicySpecError, resolve
    from simulator.sources import expand

    if args.seeds < 1 or args.interval < 1 or args.noise < 0 or not 0 < args.alpha < 1 or args.bootstrap < 100:
        print(
            "dispatch ab: need --seeds >= 1, --interval >= 1, --noise >= 0, 0 < --alpha < 1, --bootstrap >= 100",
            file=sys.stderr,
        )
        return 2
    try:
        instances = expand(args.instances or ["0o50t75s2p100"])
        for spec in (args.a, args.b):
            if not spec.startswith("grpc://"):
                resolve(spec)  # fail before any simulation on a typo
        config = ABConfig(
            args.a,
            args.b,
            tuple(instances),
            args.seeds,
            NoiseConfig().scaled(args.noise),
            args.interval,
            args.alpha,
            args.bootstrap,
        )
        run = run_ab(config, args.out, jobs=args.jobs or default_jobs(), progress=not args.no_progress)
    except (InstanceError, PolicySpecError, ABError) as exc:
        print(f"dispatch ab: {exc}", file=sys.stderr)
        return 2
    if not run.complete:
        print(
            f"dispatch ab: STOPPED — {run.error}\n{run.done} of {run.total} days finished and kept; no report was "
            f"written (see {run.out / 'STATUS.md'}). Rerun the same command to resume.",
            file=sys.stderr,
        )
        return 1
    assert run.report is not None
    for line in run.report["verdicts"].values():
        print(line)
    print(f"\nreport: {run.out / 'report.md'} (JSON: {run.out / 'report.json'})")
    return 0

"""``dispatch simulate`` and ``dispatch check``: run heuristics over instances, verify solutions."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from simulator.cli_paths import path_arg
from simulator.epochs import add_interval_option
from simulator.seeds import seed_arg


def register(sub: Any) -> None:
    """Add the simulator's subcommands to the ``dispatch`` parser."""
    p = sub.add_parser(
        "simulate",
        help="simulate instances under heuristic policies and print MDRP metrics",
        description=(
            "Simulate MDRP days under one or more policies. Instances are public names "
            "(0o100t100s1p100), folders in the MDRP format, or synthetic:SEED. With several policies "
            "the metrics are printed side by side. Solution files go to OUT/<instance>/<policy>/."
        ),
    )
    p.add_argument(
        "--instance", action="append", default=[], metavar="NAME|PATH|synthetic:SEED", help="an instance (repeatable)"
    )
    p.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="GLOB",
        help="public instances by pattern, e.g. '0*', 'seed0/*', '*o50*' (repeatable)",
    )
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="heuristic(s): random, nearest, assignment, reyes (default: all four)",
    )
    p.add_argument("--out", type=path_arg, help="write the three MDRP solution files per instance and policy here")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    add_interval_option(p)
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of stochastic policies (default 0)")
    p.add_argument("--json", type=path_arg, help="also write every run's metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=simulate)

    c = sub.add_parser(
        "check",
        help="verify MDRP solution files against an instance and recompute their metrics",
        description="Independent feasibility check of the three MDRP solution files (eight rules) "
        "and recomputation of every metric from the files alone.",
    )
    c.add_argument(
        "--instance", required=True, metavar="NAME|PATH|synthetic:SEED", help="the instance the solution is for"
    )
    c.add_argument("--solution", required=True, type=path_arg, help="folder holding the three solution files")
    c.set_defaults(handler=check)

    ev = sub.add_parser(
        "evaluate",
        help="evaluate exported models next to the heuristics on the same instances",
        description="Simulate exported models (ONNX + manifest, run by ONNX Runtime without torch) and the "
        "heuristics on the same instances and print their MDRP metrics side by side. Instance seeds 6-9 "
        "are the held-out set: never train, tune or select models on them.",
    )
    ev.add_argument(
        "--model", action="append", default=[], type=path_arg, metavar="MODEL.onnx", help="exported model (repeatable)"
    )
    ev.add_argument("--instances", action="append", default=[], metavar="SPEC|GLOB", help="instances (repeatable)")
    ev.add_argument("--heuristics", default="nearest,assignment,reyes", help="heuristics to compare with ('' for none)")
    ev.add_argument("--sample", action="store_true", help="sample each courier's action instead of the conflict rule")
    ev.add_argument("--seed", type=seed_arg, default=0, help="seed of sampled policies (default 0)")
    add_interval_option(ev, "every policy decides at this cadence")
    ev.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    ev.add_argument(
        "--fleet",
        action="store_true",
        help="also print how the fleet's time was used: minutes driven to the restaurant and from assignment to "
        "pickup per bundle, work minutes per delivered order",
    )
    ev.add_argument("--json", type=path_arg, help="also write every run's metrics to this JSON file")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.set_defaults(handler=evaluate)

    logs = sub.add_parser(
        "logs",
        help="offline logs of dispatch decisions: generate, card",
        description="Generate and describe offline log datasets (Parquet + manifest).",
    )
    lsub = logs.add_subparsers(dest="logs_command", metavar="ACTION", required=True)
    g = lsub.add_parser(
        "generate",
        help="simulate days under a behaviour recipe and log every decision",
        description="Simulate days × instances under a behaviour recipe (reyes-soft, assignment-soft, "
        "nearest-noisy, random, or mixed) and write a versioned Parquet log dataset. Parallel across "
        "processes; a killed run resumes where it stopped when rerun with the same arguments.",
    )
    g.add_argument("--recipe", default="mixed", help="behaviour recipe (default mixed)")
    g.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="SPEC|GLOB",
        help="instances: names, globs ('seed0/*'), paths, synthetic:SEED or synthetic:A-B (repeatable)",
    )
    g.add_argument("--days", type=int, default=1, help="days logged per instance (default 1, at most 10000)")
    g.add_argument("--seed", type=seed_arg, default=0, help="dataset seed (default 0)")
    add_interval_option(g)
    g.add_argument("--k", type=int, default=16, help="candidates per courier (default 16)")
    g.add_argument(
        "--cover",
        type=int,
        default=0,
        help="of the K slots, how many go first to orders no courier's other slots list (default 0: plain top-K)",
    )
    g.add_argument(
        "--lookahead",
        type=int,
        default=0,
        metavar="MIN",
        help="couriers free within MIN minutes are agents too; their logged actions are the reservations reyes "
        "holds for them, or wait (default 0: idle couriers only)",
    )
    g.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a reward weight (simulator.engine.RewardConfig: on_time, ctd_per_minute, "
        "overage_per_minute, undelivered, timing=assignment|accrued|placement); repeatable",
    )
    g.add_argument("--out", type=path_arg, required=True, help="dataset folder (created, or resumed)")
    g.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.set_defaults(handler=logs_generate)
    cd = lsub.add_parser(
        "card",
        help="write and print a dataset's card (CARD.md + returns.png)",
        description="Compute a dataset card: how it was made, sizes, return distribution, "
        "per-recipe MDRP metrics, action entropy and coverage.",
    )
    cd.add_argument("folder", type=path_arg, help="dataset folder")
    cd.set_defaults(handler=logs_card)


# Days logged per instance: each is seconds to minutes of simulation, so more is a typo, not a dataset (the days
# are planned up front, and 10^8 of them took minutes before anything was written or said).
MAX_LOG_DAYS = 10_000


def _policies(values: list[str]) -> list[str] | str:
    """The heuristics named by ``--policy`` (all of them when it is not given), or why they cannot be run."""
    from simulator.heuristics import NAMES

    if not values:
        return list(NAMES)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        return f"--policy {values[0]!r} names no heuristic ({', '.join(NAMES)})"
    for n in names:
        if n not in NAMES:
            return f"--policy {n!r} is not a heuristic ({', '.join(NAMES)})"
    return names


def simulate(args: argparse.Namespace) -> int:
    """Run every instance × policy and print their metrics."""
    from simulator.batch import Task, run_many
    from simulator.engine import SimConfig
    from simulator.instance import InstanceError
    from simulator.report import mean_metrics, text_table
    from simulator.sources import expand

    if problem := _common_problem(args):
        print(f"dispatch simulate: {problem}", file=sys.stderr)
        return 2
    policies = _policies(args.policy)
    if isinstance(policies, str):
        print(f"dispatch simulate: {policies}", file=sys.stderr)
        return 2
    try:
        instances = list(args.instance) + expand(args.instances)
    except InstanceError as exc:
        print(f"dispatch simulate: {exc}", file=sys.stderr)
        return 2
    if not instances:
        instances = ["0o100t100s1p100"]
    cfg = SimConfig(dispatch_interval=args.interval)
    tasks = [
        Task(
            i,
            p,
            seed=args.seed,
            config=cfg,
            out=str(args.out / Path(i).name.replace(":", "-") / p) if args.out else None,
        )
        for i in instances
        for p in policies
    ]
    try:
        results = run_many(tasks, jobs=args.jobs or None, progress=not args.no_progress and len(tasks) > 1)
    except InstanceError as exc:
        print(f"dispatch simulate: {exc}", file=sys.stderr)
        return 2
    if len(instances) <= 4:
        for name in dict.fromkeys(r.instance_name for r in results):
            rows = [r for r in results if r.instance_name == name]
            print(f"\n{name}")
            print(text_table([r.task.policy for r in rows], [r.metrics for r in rows]))
    if len(instances) > 1:
        print(f"\nmean over {len(instances)} instances")
        print(
            text_table(policies, [mean_metrics([r.metrics for r in results if r.task.policy == p]) for p in policies])
        )
    if args.out:
        print(f"\nsolution files under {args.out}/<instance>/<policy>/")
    if args.json:
        payload = [
            {"instance": r.instance_name, "policy": r.task.policy, "seconds": r.seconds, "metrics": r.metrics}
            for r in results
        ]
        return _write_json(args.json, payload, "simulate")
    return 0


def check(args: argparse.Namespace) -> int:
    """Verify one solution folder; exit 1 when any rule is broken."""
    from simulator.checker import check_solution
    from simulator.instance import InstanceError
    from simulator.report import text_table
    from simulator.solution import SolutionError
    from simulator.sources import load_spec

    try:
        inst = load_spec(args.instance)
        report = check_solution(inst, args.solution)
    except (InstanceError, SolutionError) as exc:
        print(f"dispatch check: {exc}", file=sys.stderr)
        return 2
    for v in report.violations[:50]:
        print(f"VIOLATION {v}")
    if len(report.violations) > 50:
        print(f"... and {len(report.violations) - 50} more")
    print(text_table([inst.name], [report.metrics], label_title="instance"))
    print("feasible" if report.feasible else f"infeasible: {len(report.violations)} violation(s)")
    return 0 if report.feasible else 1


def logs_generate(args: argparse.Namespace) -> int:
    """Generate (or resume) a log dataset."""
    from dispatch.candidates import MAX_LOOKAHEAD, CandidateConfig
    from simulator.batch import default_jobs
    from simulator.behaviour import RECIPE_NAMES
    from simulator.engine import SimConfig, reward_config
    from simulator.folder_lock import FolderBusy
    from simulator.instance import InstanceError
    from simulator.logs.dataset import LogError
    from simulator.logs.generate import generate
    from simulator.sources import expand

    if args.recipe not in RECIPE_NAMES:
        print(
            f"dispatch logs generate: --recipe {args.recipe!r} is not one of {', '.join(RECIPE_NAMES)}", file=sys.stderr
        )
        return 2
    for flag in ("days", "interval", "k"):
        if getattr(args, flag) < 1:
            print(f"dispatch logs generate: --{flag} must be at least 1, got {getattr(args, flag)}", file=sys.stderr)
            return 2
    if args.days > MAX_LOG_DAYS:
        print(f"dispatch logs generate: --days must be at most {MAX_LOG_DAYS}, got {args.days}", file=sys.stderr)
        return 2
    if problem := _common_problem(args, own="manifest.json"):
        print(f"dispatch logs generate: {problem}", file=sys.stderr)
        return 2
    from dispatch.model import MAX_K

    if args.k > MAX_K:  # no runtime loads a model this wide (dispatch.model), so the logs could train nothing
        print(f"dispatch logs generate: --k must be at most {MAX_K}, got {args.k}", file=sys.stderr)
        return 2
    if not 0 <= args.cover < args.k:
        print(f"dispatch logs generate: --cover {args.cover} must be >= 0 and below --k ({args.k})", file=sys.stderr)
        return 2
    if not 0 <= args.lookahead <= MAX_LOOKAHEAD:
        print(
            f"dispatch logs generate: --lookahead must be 0 to {MAX_LOOKAHEAD} minutes, got {args.lookahead}",
            file=sys.stderr,
        )
        return 2
    try:
        reward_config(args.reward)
    except ValueError as exc:
        print(f"dispatch logs generate: --reward: {exc}", file=sys.stderr)
        return 2
    try:
        instances = expand(args.instances or ["0o50t75s2p100"])
        man = generate(
            args.out,
            args.recipe,
            instances,
            args.days,
            args.seed,
            sim=SimConfig(dispatch_interval=args.interval),
            cands=CandidateConfig(k=args.k, cover=args.cover, lookahead=args.lookahead),
            reward=reward_config(args.reward),
            jobs=args.jobs or default_jobs(),
            progress=not args.no_progress,
        )
    except (InstanceError, LogError, FolderBusy) as exc:
        print(f"dispatch logs generate: {exc}", file=sys.stderr)
        return 2
    print(f"{len(man['episodes'])} day(s) logged in {args.out}")
    return 0


def logs_card(args: argparse.Namespace) -> int:
    """Print (and write) a dataset card."""
    from simulator.logs.card import CardNotWritten, make_card
    from simulator.logs.dataset import LogError

    try:
        print(make_card(args.folder))
    except LogError as exc:
        print(f"dispatch logs card: {exc}", file=sys.stderr)
        return 2
    except CardNotWritten as exc:
        print(exc.text)
        print(f"dispatch logs card: {exc}", file=sys.stderr)
        return 1
    return 0


def _common_problem(args: argparse.Namespace, own: str | None = None) -> str | None:
    """What is wrong with ``--jobs``, or why ``--json`` or ``--out`` (where the command has them) cannot be
    written: checked before any work. ``own`` is the command's marker file in --out (see writable.foreign_output)."""
    from simulator.writable import folder_problem, foreign_output, replace_problem

    if args.jobs < 0:
        return f"--jobs must be >= 0 (0: usable cores), got {args.jobs}"
    if getattr(args, "interval", 1) < 1:
        return f"--interval must be at least 1, got {args.interval}"
    if getattr(args, "json", None) and (problem := replace_problem(args.json, _metrics_json, "a metrics file")):
        return f"--json {args.json}: {problem}"
    if getattr(args, "out", None) and (problem := folder_problem(args.out) or foreign_output(args.out, own)):
        return f"--out {args.out}: {problem}"
    return None


def _metrics_json(data: bytes) -> bool:
    """Whether ``data`` is what ``--json`` writes (one record per simulated day), so a rerun may replace it."""
    try:
        records = json.loads(data)
    except ValueError:
        return False
    keys = {"instance", "policy", "metrics"}
    return isinstance(records, list) and all(isinstance(r, dict) and keys <= r.keys() for r in records)


def _write_json(path: Path, payload: object, command: str) -> int:
    """Write ``payload`` to ``path`` (atomically); if that fails now, keep it in a temporary file and say where."""
    import tempfile

    text = json.dumps(payload, indent=1)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = f"--json {path}: cannot write ({exc.strerror or exc})"
        try:
            fd, kept = tempfile.mkstemp(prefix=f"dispatch-{command}-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError:
            print(text)  # nowhere to keep it: the metrics go to standard output rather than nowhere
            print(f"dispatch {command}: {why}; printed above instead", file=sys.stderr)
            return 1
        print(f"dispatch {command}: {why}; kept in {kept}", file=sys.stderr)
        return 1
    return 0


def _labels(models: list[str], heuristics: list[str]) -> list[str]:
    """Row labels: a model's file name without its suffix, or its path as given where two models (or a model
    and a heuristic) would share one, so no two rows carry the same label."""
    stems = [Path(m).stem for m in models]
    clash = {s for s in stems if stems.count(s) > 1 or s in heuristics}
    return [m if s in clash else s for m, s in zip(models, stems, strict=True)] + heuristics


def evaluate(args: argparse.Namespace) -> int:
    """Models and heuristics over the same instances, metrics side by side."""
    from dispatch.model import ModelError
    from dispatch.onnx_policy import OnnxPolicy
    from simulator.batch import Task, run_many
    from simulator.heuristics import NAMES as HEURISTICS
    from simulator.instance import InstanceError
    from simulator.report import FLEET_COLUMNS, mean_metrics, text_table
    from simulator.sources import expand

    models = [str(m) for m in args.model]
    if twice := next((m for i, m in enumerate(models) if m in models[:i]), None):
        print(f"dispatch evaluate: --model {twice}: given twice", file=sys.stderr)
        return 2
    if named := next((m for m in models if m in HEURISTICS), None):
        print(f"dispatch evaluate: --model {named}: is a heuristic's name; give the file as ./{named}", file=sys.stderr)
        return 2
    for m in args.model:
        try:
            OnnxPolicy(m)  # the manifest, and whether ONNX Runtime can load the model with the contract's inputs
        except (OSError, ModelError) as exc:
            print(f"dispatch evaluate: --model {m}: {exc}", file=sys.stderr)
            return 2
    heuristics = [h for h in args.heuristics.split(",") if h]
    unknown = [h for h in heuristics if h not in HEURISTICS]
    if unknown:
        print(f"dispatch evaluate: --heuristics {unknown[0]!r}: not one of {', '.join(HEURISTICS)}", file=sys.stderr)
        return 2
    if problem := _common_problem(args):
        print(f"dispatch evaluate: {problem}", file=sys.stderr)
        return 2
    policies = models + heuristics
    if not policies:
        print("dispatch evaluate: nothing to evaluate (give --model or --heuristics)", file=sys.stderr)
        return 2
    try:
        instances = expand(args.instances or ["[6-9]o50*", "[6-9]r50*"])
    except InstanceError as exc:
        print(f"dispatch evaluate: {exc}", file=sys.stderr)
        return 2
    from simulator.engine import SimConfig

    opts = (("sample", 1),) if args.sample else ()
    cfg = SimConfig(dispatch_interval=args.interval)
    tasks = [
        Task(i, p, seed=args.seed, options=opts if p in models else (), config=cfg) for i in instances for p in policies
    ]
    try:
        results = run_many(tasks, jobs=args.jobs or None, progress=not args.no_progress)
    except (ModelError, InstanceError) as exc:
        print(f"dispatch evaluate: {exc}", file=sys.stderr)
        return 2
    labels = _labels(models, heuristics)
    print(f"mean over {len(instances)} instances")
    print(text_table(labels, [mean_metrics([r.metrics for r in results if r.task.policy == p]) for p in policies]))
    if args.fleet:
        print()
        fleet = [mean_metrics([r.fleet for r in results if r.task.policy == p]) for p in policies]
        print(text_table(labels, fleet, columns=FLEET_COLUMNS))
    if args.json:
        payload = [
            {"instance": r.instance_name, "policy": r.task.policy, "metrics": r.metrics, "fleet": r.fleet}
            for r in results
        ]
        return _write_json(args.json, payload, "evaluate")
    return 0

"""``dispatch export`` and the dispatch side of ``dispatch train`` (imports torch inside handlers only)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from simulator.cli_paths import path_arg


def register(sub: Any) -> None:
    """Add ``export`` to the ``dispatch`` parser."""
    p = sub.add_parser(
        "export",
        help="export a trained dispatch run to ONNX with its manifest",
        description="Write RUN's policy as MODEL.onnx plus MODEL.json (feature schema, candidate and conflict "
        "rules, training data hash, config, metrics at export, checksum), and check torch/ONNX parity.",
    )
    p.add_argument("run", type=path_arg, help="training run folder (holds checkpoint.pt and config.json)")
    p.add_argument("--out", type=path_arg, required=True, help="MODEL.onnx to write (manifest goes beside it)")
    p.add_argument("--name", default="", help="model name (default: the run folder's name)")
    p.add_argument("--version", default="1", help="model version (default 1)")
    p.add_argument(
        "--conflict-rule",
        default="plan",
        help="joint-action rule recorded in the manifest: plan, greedy, assignment, sequential, mass or "
        "mass-bundle (default plan: reyes' rolling-horizon plan over its own bundles, each courier's best K, "
        "the pairs of each priority group ranked by the plan's value blended with the model's preference; "
        "mass-bundle: mass, plus committed singles upgraded to their bundles when open orders are at least as "
        "many as the couriers deciding)",
    )
    p.add_argument(
        "--lookahead",
        type=int,
        metavar="MIN",
        help="couriers free within MIN minutes also score candidates, and what they pick is reserved for them, "
        "not executed; recorded in the manifest (default: the logs' lookahead, else 15; 0: idle couriers only; "
        "not with the plan rule)",
    )
    p.add_argument(
        "--defer",
        type=int,
        metavar="MIN",
        help="a free courier whose pick it would reach MIN or more minutes before the food is ready waits and is "
        "decided again next epoch; recorded in the manifest (default: the logs' value, else 4; 0: commit at once; "
        "not with the plan rule)",
    )
    p.add_argument(
        "--metrics",
        type=path_arg,
        metavar="FILE",
        help="JSON file holding an object of metric name → number, recorded in the manifest",
    )
    p.set_defaults(handler=run_export)


def run_dispatch_train(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """``dispatch train --data LOGS_DIR``: BC or InSPO on a dispatch log dataset."""
    from simulator.logs.dataset import LogError
    from training.dispatch.train import DispatchTrainConfig, train

    if args.algo not in ("bc", "inspo"):
        print(f"dispatch train: --algo {args.algo} is not available for dispatch logs (bc, inspo)", file=sys.stderr)
        return 2
    gamma = DispatchTrainConfig.gamma if args.gamma is None else args.gamma
    if not 0.0 <= gamma < 1.0:
        print(f"dispatch train: --gamma must be in [0, 1), got {gamma}", file=sys.stderr)
        return 2
    cfg = DispatchTrainConfig(
        data=str(args.data),
        gamma=gamma,
        algo=args.algo,
        steps=args.steps,
        **({} if args.batch_size is None else {"batch_size": args.batch_size}),
        seed=args.seed,
        out=args.out,
        ckpt_every=args.ckpt_every,
        resume=args.resume,
        stop_after=args.stop_after,
        progress=not args.no_progress,
        device=args.device,
        params=params,
    )
    try:
        res = train(cfg)
    except (LogError, ValueError) as exc:
        print(f"dispatch train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res["stats"], indent=1))
    print(f"run written to {args.out}; export it with: dispatch export {args.out} --out MODEL.onnx")
    return 0


def read_metrics(path: Path) -> dict[str, float]:
    """The ``--metrics`` file: a JSON object of metric name → finite number; ValueError says what is wrong."""
    from training.harness import read_json

    body = read_json(path)
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object of metric name → number, got {type(body).__name__}")
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value!r}, not a finite number")
    return {k: float(v) for k, v in body.items()}


def _is_model_manifest(path: Path) -> bool:
    """Whether ``path`` is a model manifest that an export wrote (so a new export may replace it)."""
    from dispatch.model import ModelError, read_manifest_body

    try:
        read_manifest_body(path)
    except ModelError:
        return False
    return True


def check_model_target(out: Path) -> str | None:
    """Why ``--out`` cannot take a model and its manifest, or None; checked before any work or write."""
    from dispatch.model import manifest_path
    from simulator.writable import file_problem

    if out.suffix == ".json":
        return "must not end in .json (the manifest is written beside the model as NAME.json)"
    for target in (out, manifest_path(out)):
        if target.is_dir():
            return f"{target} is a folder; give the model file to write, e.g. {target / 'model.onnx'}"
    # Export replaces an earlier export in place, and nothing else: a run's config.json, a dataset's
    # manifest.json or any other file sitting where the model or its manifest would go is kept.
    for target in (out, manifest_path(out)):
        if target.exists() and not _is_model_manifest(manifest_path(out)):
            return f"{target} exists and is not part of an exported model (it would be overwritten): pick another"
    # The nearest existing folder holds the files (or the folders made for them): it must take a new file.
    return file_problem(out)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``dispatch export``: every argument is checked before the model is built or anything written."""
    from dispatch.assemble import PLAN_RULE, RULES
    from dispatch.candidates import MAX_LOOKAHEAD
    from dispatch.model import MAX_TEXT
    from simulator.logs.dataset import LogError
    from training.dispatch.export import PARITY_MEASURE, PARITY_TOLERANCE, export_run

    if args.conflict_rule not in RULES:
        print(
            f"dispatch export: --conflict-rule {args.conflict_rule!r} is not one of {', '.join(RULES)}",
            file=sys.stderr,
        )
        return 2
    for flag, value in (("--lookahead", args.lookahead), ("--defer", args.defer)):
        if value is not None and not 0 <= value <= MAX_LOOKAHEAD:
            print(f"dispatch export: {flag} must be 0 to {MAX_LOOKAHEAD} minutes, got {value}", file=sys.stderr)
            return 2
        if value and args.conflict_rule == PLAN_RULE:
            print(f"dispatch export: {flag} does not apply to --conflict-rule {PLAN_RULE}", file=sys.stderr)
            return 2
    # The manifest's name and version are refused at load when blank or over MAX_TEXT: refuse them here, before
    # a model that nothing would load is written (an empty --name means the run folder's name).
    for flag, value, blank_ok in (("--name", args.name, True), ("--version", args.version, False)):
        if (not value.strip() and not (blank_ok and value == "")) or len(value) > MAX_TEXT:
            print(f"dispatch export: {flag} {value!r}: must be 1 to {MAX_TEXT} characters, not blank", file=sys.stderr)
            return 2
    problem = check_model_target(args.out)
    if problem:
        print(f"dispatch export: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    try:
        metrics = read_metrics(args.metrics) if args.metrics else {}
    except ValueError as exc:
        print(f"dispatch export: --metrics {args.metrics}: {exc}", file=sys.stderr)
        return 2
    try:
        path, diff = export_run(
            args.run,
            args.out,
            args.name,
            args.version,
            args.conflict_rule,
            metrics,
            lookahead=args.lookahead,
            defer=args.defer,
        )
    except (LogError, ValueError) as exc:
        print(f"dispatch export: {exc}", file=sys.stderr)
        return 2
    manifest = path.with_suffix(".json").name
    print(
        f"exported {path} (+ {manifest}); torch/ONNX parity {diff:.2e} ({PARITY_MEASURE}; at most {PARITY_TOLERANCE})"
    )
    return 0 if diff <= PARITY_TOLERANCE else 1

"""``dispatch train``: train an offline MARL algorithm. Imports torch only inside the handler."""

from __future__ import annotations

import argparse
import json
import math
import sys
import typing
from pathlib import Path
from typing import Any

from simulator.cli_paths import path_text
from simulator.seeds import seed_arg
from training.defaults import DISPATCH_BATCH, GAME_BATCH

ALGOS = ("inspo", "bc", "icq", "omiga")  # mirrors training.algos.ALGORITHMS without importing torch
# Flags that count something and must be at least 1, checked before any work (seeds: simulator.seeds).
POSITIVE_FLAGS = ("steps", "batch_size", "eval_every", "ckpt_every", "stop_after")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _coerce(key: str, text: str, kind: Any) -> Any:
    """``text`` as the type of config field ``key``; ValueError ``KEY: 'TEXT' is not ...``."""
    if kind is bool:
        word = text.lower()
        if word not in ("true", "false", "1", "0"):
            raise ValueError(f"{key}: {text!r} is not true or false")
        return word in ("true", "1")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}: {text!r} is not an integer") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{key}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{key}: {text!r} is not a finite number")
        return value
    return text


def parse_settings(algo: str, items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as typed overrides of ``algo``'s config, checked by the config itself.

    Raises ValueError ``KEY: ...`` for an unknown key, a value not of the field's type, or one the
    config refuses (its ``__post_init__``), so nothing trains with a setting it cannot use.
    """
    from training.algos import config_class

    cfg_cls = config_class(algo)
    kinds = typing.get_type_hints(cfg_cls)
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expects KEY=VALUE, got {item!r}")
        if key not in kinds:
            raise ValueError(f"{key}: unknown setting for {algo} (known: {', '.join(kinds)})")
        params[key] = _coerce(key, value.strip(), kinds[key])
    cfg_cls(**params)  # the config's own range checks, named by field
    return params


def _check_data(spec: str) -> str | None:
    """Why ``--data`` names neither a folder nor a known GAME:DATASET, or None when it is usable."""
    if not spec.strip():  # Path("") is the current folder: an empty flag must not train on whatever is here
        return "--data is empty; give a log dataset folder or GAME:DATASET"
    if Path(spec).is_dir():
        return None
    if Path(spec).exists():
        return f"--data {spec}: not a folder (and not a GAME:DATASET spec)"
    from training.games import available_games, load_game

    game, sep, dataset = spec.partition(":")
    if not sep or game not in available_games():
        return f"--data {spec}: no such folder (and not a GAME:DATASET spec; games: {', '.join(available_games())})"
    names = load_game(game).dataset_names()
    if dataset not in names:
        return f"--data {spec}: {game} has no dataset {dataset!r} (known: {', '.join(names)})"
    return None


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand to the ``dispatch`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train BC, InSPO or an offline MARL baseline on a dataset",
        description="Train an offline multi-agent policy. Writes under --out: config.json and checkpoint.pt, then "
        "for a game eval.csv, tb/ and final.json, for dispatch logs train.csv and stats.json; --resume continues "
        "bit-identically from the last checkpoint.",
    )
    p.add_argument("--algo", choices=ALGOS, default="inspo", help="algorithm (default: inspo)")
    p.add_argument(
        "--data",
        default="xor:ab_ba",
        help="data source: GAME:DATASET for a benchmark game (xor:ab_ba, mne:balanced, bridge:mix), "
        "or a dispatch log dataset folder (dispatch logs generate)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="training seed (default: 0)")
    p.add_argument("--data-seed", type=seed_arg, default=0, help="seed used to build the game dataset (default: 0)")
    p.add_argument("--steps", type=int, default=3000, help="gradient steps (default: 3000)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"minibatch size: transitions for a game (default: {GAME_BATCH}), "
        f"decision epochs for dispatch logs (default: {DISPATCH_BATCH})",
    )
    p.add_argument(
        "--gamma", type=float, default=None, help="discount per decision epoch, dispatch logs only (default 0.95)"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="dispatch logs only: where the networks train; cuda is refused where CUDA is unusable, "
        "auto takes CUDA when usable (default cpu)",
    )
    p.add_argument("--eval-every", type=int, default=500, help="evaluate every N steps (default: 500)")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps (default: 500)")
    p.add_argument("--out", default="runs/default", type=path_text, help="output directory (default: runs/default)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from its checkpoint, with the --algo, --data and --set it was made with "
        "(without --resume, an OUT that holds a run is refused, never overwritten)",
    )
    p.add_argument("--stop-after", type=int, default=None, help="stop after N steps as if interrupted")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="algorithm config override, repeatable, e.g. --set alpha=0.1; InSPO's entropy weight is annealed on "
        "the games (from beta_start to beta over beta_anneal_steps), so no entropy at all is "
        "--set beta=0 --set beta_anneal_steps=0 (docs/inspo.md A11)",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``dispatch train``."""
    from simulator.writable import folder_problem, foreign_output
    from training.harness import CONFIG_NAME, TrainConfig, train

    for dest in POSITIVE_FLAGS:
        value = getattr(args, dest)
        if value is not None and value < 1:
            print(f"dispatch train: {_flag(dest)} must be at least 1, got {value}", file=sys.stderr)
            return 2
    if problem := folder_problem(Path(args.out)) or foreign_output(Path(args.out), own="config.json"):
        print(f"dispatch train: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    problem = _check_data(args.data)
    if problem:
        print(f"dispatch train: {problem}", file=sys.stderr)
        return 2
    if args.resume and not (Path(args.out) / CONFIG_NAME).is_file():
        # Not refused (a script may pass --resume on every start), but never silent: a mistyped --out would
        # otherwise train from scratch without a word.
        print(f"dispatch train: --resume: {args.out} holds no run yet; starting a new one", file=sys.stderr)
    try:
        params = parse_settings(args.algo, args.set)
    except ValueError as exc:
        print(f"dispatch train: --set {exc}", file=sys.stderr)
        return 2
    if Path(args.data).is_dir():
        # A folder is a dispatch log dataset (simulator/logs); games are GAME:DATASET specs.
        from training.dispatch.cli import run_dispatch_train

        return run_dispatch_train(args, params)
    for flag, given, why in [
        ("--gamma", args.gamma is not None, "a game's discount is part of its spec"),
        ("--device", args.device != "cpu", "the benchmark games train on the CPU"),
    ]:
        if given:
            print(f"dispatch train: {flag} applies to dispatch log datasets; {why}", file=sys.stderr)
            return 2
    cfg = TrainConfig(
        algo=args.algo,
        data=args.data,
        seed=args.seed,
        data_seed=args.data_seed,
        steps=args.steps,
        **({} if args.batch_size is None else {"batch_size": args.batch_size}),
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        out=args.out,
        resume=args.resume,
        stop_after=args.stop_after,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        algo_params=params,
    )
    try:
        result = train(cfg)
    except ValueError as exc:  # a run in --out, a checkpoint that does not fit: named by the message
        print(f"dispatch train: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        # torch reports a failed CPU allocation as a RuntimeError ("can't allocate memory"), a CUDA one as
        # OutOfMemoryError (a RuntimeError too); anything else is a bug and keeps its traceback.
        text = str(exc)
        if not isinstance(exc, MemoryError) and "allocate" not in text and "out of memory" not in text:
            raise
        batch = cfg.batch_size if args.batch_size is not None else "the default"
        detail = text.splitlines()[0][:200] if text else "no detail"
        print(
            f"dispatch train: out of memory at --batch-size {batch} ({detail}); give a smaller --batch-size",
            file=sys.stderr,
        )
        return 1
    if "final" in result:
        print(json.dumps(result["final"], indent=2))
    else:
        print(f"stopped after {result['stopped_at']} steps; resume with --resume")
    return 0

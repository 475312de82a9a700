"""``dispatch train``: train an offline MARL algorithm. Imports torch only inside the handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ALGOS = ("inspo", "bc", "icq", "omiga")  # mirrors training.algos.ALGORITHMS without importing torch


def _parse_value(text: str) -> Any:
    """``0.1`` → float, ``true`` → bool, ``3`` → int, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand to the ``dispatch`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train BC, InSPO or an offline MARL baseline on a dataset",
        description="Train an offline multi-agent policy. Writes config.json, eval.csv, tb/, checkpoint.pt "
        "and final.json under --out; --resume continues bit-identically from the last checkpoint.",
    )
    p.add_argument("--algo", choices=ALGOS, default="inspo", help="algorithm (default: inspo)")
    p.add_argument(
        "--data",
        default="xor:ab_ba",
        help="data source: GAME:DATASET for a benchmark game (xor:ab_ba, mne:balanced, bridge:mix), "
        "or a dispatch log dataset folder (dispatch logs generate)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--data-seed", type=int, default=0, help="seed used to build the game dataset (default: 0)")
    p.add_argument("--steps", type=int, default=3000, help="gradient steps (default: 3000)")
    p.add_argument("--batch-size", type=int, default=256, help="minibatch size (default: 256)")
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
    p.add_argument("--out", default="runs/default", help="output directory (default: runs/default)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--stop-after", type=int, default=None, help="stop after N steps as if interrupted")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="algorithm config override, repeatable, e.g. --set alpha=0.1 --set beta=0",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``dispatch train``."""
    from training.harness import TrainConfig, train

    params: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = _parse_value(value.strip())
    if Path(args.data).is_dir():
        # A folder is a dispatch log dataset (simulator/logs); games are GAME:DATASET specs.
        from training.dispatch.cli import run_dispatch_train

        return run_dispatch_train(args, params)
    if args.gamma is not None:
        raise SystemExit("--gamma applies to dispatch log datasets; a game's discount is part of its spec")
    if args.device != "cpu":
        raise SystemExit("--device applies to dispatch log datasets; the benchmark games train on the CPU")
    cfg = TrainConfig(
        algo=args.algo,
        data=args.data,
        seed=args.seed,
        data_seed=args.data_seed,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        out=args.out,
        resume=args.resume,
        stop_after=args.stop_after,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        algo_params=params,
    )
    result = train(cfg)
    if "final" in result:
        print(json.dumps(result["final"], indent=2))
    else:
        print(f"stopped after {result['stopped_at']} steps; resume with --resume")
    return 0

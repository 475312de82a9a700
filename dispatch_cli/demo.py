"""``make demo``: the main job end to end on an embedded default, in minutes on 2 CPU cores.

Steps so far: simulate one public MDRP day under every heuristic, print their metrics side by side,
write the MDRP solution files and verify each with the independent checker; generate a small
offline log dataset under the ``mixed`` behaviour recipe and print its dataset card.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dispatch_cli.main import main as dispatch

DEFAULT_INSTANCE = "0o100t100s1p100"


def step(title: str) -> None:
    """Print a step banner."""
    print(f"\n=== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo pipeline; returns non-zero at the first failing step."""
    ap = argparse.ArgumentParser(prog="python -m dispatch_cli.demo", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="where artefacts go (default demo-out/)")
    ap.add_argument("--instance", default=DEFAULT_INSTANCE, help=f"MDRP day to use (default {DEFAULT_INSTANCE})")
    ap.add_argument("--log-instance", default="0o50t75s2p100", help="day the demo logs are generated on")
    ap.add_argument("--train-steps", type=int, default=400, help="InSPO gradient steps (default 400)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    sim = args.out / "simulate"
    step(f"1. simulate {args.instance} under every heuristic")
    rc = dispatch(["simulate", "--instance", args.instance, "--out", str(sim), "--no-progress"])
    if rc:
        return rc
    step("2. verify every solution with the independent checker")
    for folder in sorted((sim / args.instance).iterdir()):
        print(f"-- {folder.name}", flush=True)
        rc = dispatch(["check", "--instance", args.instance, "--solution", str(folder)])
        if rc:
            return rc
    logs = args.out / "logs"
    step("3. generate a small offline log dataset (mixed recipe) and print its card")
    rc = dispatch(
        [
            "logs",
            "generate",
            "--recipe",
            "mixed",
            "--instances",
            args.log_instance,
            "--days",
            "4",
            "--out",
            str(logs),
            "--no-progress",
        ]
    )
    if rc:
        return rc
    rc = dispatch(["logs", "card", str(logs)])
    if rc:
        return rc
    run = args.out / "run-inspo"
    model = args.out / "models" / "inspo-demo.onnx"
    step("4. train a small InSPO policy on the demo logs")
    rc = dispatch(
        [
            "train",
            "--algo",
            "inspo",
            "--data",
            str(logs),
            "--steps",
            str(args.train_steps),
            "--out",
            str(run),
            "--no-progress",
            "--set",
            "warmup_steps=" + str(args.train_steps // 2),
        ]
    )
    if rc:
        return rc
    step("5. export it to ONNX (with its manifest) and check torch/ONNX parity")
    rc = dispatch(["export", str(run), "--out", str(model), "--name", "inspo-demo"])
    if rc:
        return rc
    step(f"6. evaluate the exported model next to the heuristics on {args.instance}")
    rc = dispatch(["evaluate", "--model", str(model), "--instances", args.instance, "--no-progress"])
    if rc:
        return rc
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artefacts under {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

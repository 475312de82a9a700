"""One worker process of a ``dispatch serve --workers N`` server (started by ``service.supervisor``).

A worker is the full single-process server (the same flags, the same code path) bound to the port the
supervisor chose, with SO_REUSEPORT so that every worker listens on it; the kernel hands each new
connection to one of them. Light at import: the supervisor imports this module only to name the
spawned process's entry point, and must not pull grpc, numpy or onnxruntime in itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dispatch.workers import PARENT_CHECK_S

log = logging.getLogger(__name__)

# Beyond its grace period, how long an orphaned worker may take to drain before it exits outright.
ORPHAN_MARGIN_S = 10.0
# Once the server has stopped, how long threads it started may take to finish before the process exits
# without them (see exit_despite_busy_threads).
EXIT_WAIT_S = 1.0


@dataclass(frozen=True)
class WorkerRole:
    """What makes a server one worker of several: its index and the admin log it shares with the others."""

    index: int
    admin_log: Path


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a spawned worker needs (picklable): the serve flags plus what the supervisor decided."""

    args: argparse.Namespace  # the parsed ``dispatch serve`` flags, as given to the supervisor
    index: int
    port: int
    ready_file: Path  # written ('PORT 0') once the worker reports SERVING
    admin_log: Path
    parent: int  # the supervisor's pid


def _watch_parent(parent: int, grace_s: float) -> None:
    """Drain and exit once the supervisor is gone (SIGKILL, OOM): a worker must never outlive it."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    log.warning("supervisor %d is gone: shutting down", parent)
    # The same graceful path as the supervisor's SIGTERM: in-flight calls finish within the grace period.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s + ORPHAN_MARGIN_S)
    os._exit(1)


def exit_despite_busy_threads(code: int, before: set[threading.Thread], wait_s: float = EXIT_WAIT_S) -> None:
    """Exit the process with ``code`` now if threads started since ``before`` are still busy after ``wait_s``.

    Called once the server has stopped: gRPC has answered or cancelled every call by the end of the
    grace period, so such a thread (a preparation, assembly or model run of a cancelled call) computes
    for nobody. Its pools are not daemonic and Python joins them at exit, which would keep a stopped
    server alive, using a core, for as long as that computation takes. Returns when nothing is busy.
    """
    end = time.monotonic() + wait_s
    busy: list[str] = []
    for t in threading.enumerate():
        if t in before or t.daemon or t is threading.current_thread():
            continue
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive():
            busy.append(t.name)
    if not busy:
        return
    log.warning("exiting with %d busy threads (%s): their calls were already cancelled", len(busy), ", ".join(busy))
    # os._exit skips atexit (which would join those threads) and stream flushing: flush here.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run_worker(spec: WorkerSpec) -> None:
    """Entry point of a spawned worker: serve until SIGTERM, exit with the server's exit code."""
    import asyncio
    import dataclasses

    from service.cli import server_config
    from service.server import serve, usable_cores

    # Ctrl-C reaches the whole process group; the supervisor turns it into one SIGTERM per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The supervisor blocks SIGINT while it spawns us (a pending one is discarded by SIG_IGN above).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    logging.basicConfig(
        level=spec.args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker {spec.index} %(name)s: %(message)s",
    )
    # Unless told otherwise, the workers split the usable cores between their thread pools instead of
    # each sizing them to all cores (N workers x all cores would oversubscribe them N times).
    share = max(1, usable_cores() // spec.args.workers)
    config = dataclasses.replace(
        server_config(spec.args),
        threads=spec.args.threads or share,
        cpu_threads=spec.args.cpu_threads or share,
        port=spec.port,
        metrics_port=None,  # the supervisor serves every worker's metrics on one port
        port_file=spec.ready_file,
        worker=WorkerRole(spec.index, spec.admin_log),
    )
    threading.Thread(target=_watch_parent, args=(spec.parent, config.grace_s), name="parent-watch", daemon=True).start()
    before = set(threading.enumerate())
    try:
        code = asyncio.run(serve(config, signals=(signal.SIGTERM,)))
    except ValueError as exc:  # a bad flag combination, refused as the single-process server refuses it
        print(f"dispatch serve: {exc}", file=sys.stderr)
        code = 2
    exit_despite_busy_threads(code, before)
    sys.exit(code)

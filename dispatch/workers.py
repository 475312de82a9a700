"""Process pools for the simulator and the service: fresh (spawned) workers that never outlive their parent."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

# How often a worker checks that the process that started it is still there.
PARENT_CHECK_S = 0.5


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)  # orphaned: the parent was killed outright and can no longer shut the pool down


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a daemon thread ends the worker once its parent process is gone.

    A parent killed outright (SIGKILL, OOM) cannot shut its pool down, and its idle workers would wait on
    their task queue forever. (Linux's PR_SET_PDEATHSIG is not used: it follows the *thread* that
    started the worker, and a pool starts workers from whichever thread submits.)
    """
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers start fresh (spawn), never as forks of this process, and die with it.

    A fork inherits every lock held by another thread at that instant; once a process runs gRPC or
    ONNX Runtime threads (the service, the tests), a forked worker can deadlock on one of them.
    """
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )

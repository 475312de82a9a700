"""Run many (instance, policy) days in parallel processes with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dispatch.policy import Policy
from simulator.engine import SimConfig


@dataclass(frozen=True)
class Task:
    """One simulated day: an instance spec, a policy (heuristic name or .onnx path) with options, a seed."""

    instance: str
    policy: str
    seed: int = 0
    options: tuple[tuple[str, float], ...] = ()
    out: str | None = None
    config: SimConfig = field(default_factory=SimConfig)


@dataclass(frozen=True)
class TaskResult:
    """The metrics of one finished task."""

    task: Task
    instance_name: str
    metrics: dict[str, float]
    seconds: float


def run_task(task: Task) -> TaskResult:
    """Simulate one task (in a worker process); writes solution files when ``task.out`` is set."""
    import time

    from simulator import solution
    from simulator.heuristics import make
    from simulator.run import run_episode
    from simulator.sources import load_spec

    start = time.perf_counter()
    inst = load_spec(task.instance)
    if task.policy.endswith(".onnx"):
        from dispatch.onnx_policy import OnnxPolicy

        policy: Policy = OnnxPolicy(task.policy, threads=1, sample=bool(dict(task.options).get("sample", 0)))
    else:
        policy = make(task.policy, **dict(task.options))
    result = run_episode(inst, policy, seed=task.seed, config=task.config)
    if task.out:
        solution.write(result.records, Path(task.out))
    return TaskResult(task, inst.name, result.metrics, time.perf_counter() - start)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: ask Linux to SIGTERM this worker when the process that started it dies.

    A parent killed outright (SIGKILL, OOM) cannot shut its pool down, and its idle workers would wait on
    their task queue forever; with the death signal they go with it. Elsewhere this is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A process pool whose workers start fresh (spawn), never as forks of this process, and die with it.

    A fork inherits every lock held by another thread at that instant; once a process runs gRPC or
    ONNX Runtime threads (the service, the tests), a forked worker can deadlock on one of them. Submit
    from a thread that lives as long as the pool: workers start at the first submit, and the death
    signal follows the thread that started them.
    """
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def default_jobs() -> int:
    """Worker processes: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def run_many(tasks: Iterable[Task], jobs: int | None = None, progress: bool = True) -> list[TaskResult]:
    """Run tasks across ``jobs`` processes; results come back in task order."""
    tasks = list(tasks)
    jobs = jobs or default_jobs()
    results: list[TaskResult | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), disable=not progress, unit="day", desc="simulate")
    if jobs == 1:
        for i, t in enumerate(tasks):
            results[i] = run_task(t)
            bar.update()
    else:
        with worker_pool(jobs) as pool:
            futures = {pool.submit(run_task, t): i for i, t in enumerate(tasks)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    bar.close()
    return [r for r in results if r is not None]

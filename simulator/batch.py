"""Run many (instance, policy) days in parallel processes with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dispatch.policy import Policy
from dispatch.workers import spawn_pool
from simulator.engine import SimConfig


@dataclass(frozen=True)
class Task:
    """One simulated day: an instance spec, a policy (heuristic name, else a model file) with options, a seed."""

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
    # How the fleet's time was used (simulator.fleet); not MDRP metrics, so kept apart from them.
    fleet: dict[str, float] = field(default_factory=dict)


def run_task(task: Task) -> TaskResult:
    """Simulate one task (in a worker process); writes solution files when ``task.out`` is set."""
    import time

    from simulator import solution
    from simulator.fleet import fleet_time
    from simulator.heuristics import NAMES, make
    from simulator.run import run_episode
    from simulator.sources import load_spec

    start = time.perf_counter()
    inst = load_spec(task.instance)
    # Any spec that is not a heuristic's name is a model file, whatever its name ends in (an exported model
    # may have been renamed); a missing or unreadable one is a ModelError naming it.
    if task.policy in NAMES:
        policy: Policy = make(task.policy, **dict(task.options))
    else:
        from dispatch.onnx_policy import OnnxPolicy

        policy = OnnxPolicy(task.policy, threads=1, sample=bool(dict(task.options).get("sample", 0)))
    result = run_episode(inst, policy, seed=task.seed, config=task.config)
    if task.out:
        solution.write(result.records, Path(task.out))
    return TaskResult(task, inst.name, result.metrics, time.perf_counter() - start, fleet_time(result.records))


@contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` spawned worker processes that go with this one (:func:`dispatch.workers.spawn_pool`).

    Leaving the block normally waits for every task. Leaving it by an exception (Ctrl-C, a failed task)
    cancels the tasks not yet started and waits only for those running: a plain executor's exit would run
    the whole queue first, so a Ctrl-C on hours of work would take hours to stop.
    """
    pool = spawn_pool(jobs)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


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

"""Run an A/B: every (instance, replicate seed, arm) cell once, in parallel, cached, resumable.

Each finished cell is written atomically to ``OUT/cells/`` by the process that ran it, so a run
that is killed or stopped by a failing policy keeps every finished cell; rerunning the same command
runs only the missing ones. The report is written only once every cell is done; until then
``OUT/STATUS.md`` says what is missing and why, and no ``report.md`` exists.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dispatch.policy import Policy
from simulator.ab.crn import NoiseConfig, entity_key, perturb, policy_seed
from simulator.ab.files import out_problem, read_json, write_json, write_text
from simulator.batch import worker_pool
from simulator.engine import SimConfig
from simulator.epochs import DEFAULT_INTERVAL
from simulator.resume import differences

FORMAT = "dispatch-ab"
FORMAT_VERSION = 2  # 2: cells hold order_ctd (every order's click-to-door) instead of ctd
MANIFEST = "ab.json"
STATUS = "STATUS.md"
ARMS = ("a", "b")
HOURS = 24


class ABError(RuntimeError):
    """An A/B that cannot run or stopped early; the message says what to do."""


@dataclass(frozen=True)
class ABConfig:
    """What an A/B compares and on which days."""

    a: str
    b: str
    instances: tuple[str, ...]
    seeds: int = 1
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    interval: int = DEFAULT_INTERVAL
    alpha: float = 0.05
    n_boot: int = 2000

    def args(self) -> dict[str, Any]:
        """The arguments that define the cells (a cached cell is reused only under the same ones)."""
        d = asdict(self)
        d["instances"] = list(self.instances)
        return d


@dataclass(frozen=True)
class Cell:
    """One simulated day of one arm."""

    instance: str
    seed: int
    arm: str
    policy: str

    def path(self, out: Path) -> Path:
        """Where the cell's result is cached."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.instance).name or self.instance)
        return out / "cells" / f"{safe}-{entity_key(self.instance):08x}" / f"s{self.seed}-{self.arm}.json"


@dataclass
class ABRun:
    """What a call to :func:`run_ab` achieved."""

    out: Path
    total: int
    done: int
    ran: int
    complete: bool
    error: str | None = None
    report: dict[str, Any] | None = None

    @property
    def identical(self) -> bool:
        """True when both arms produced exactly the same metrics in every cell."""
        return bool(self.report and self.report["identical"])


@lru_cache(maxsize=8)
def _cached_resolve(spec: str) -> Policy:
    """One policy object per spec per process (an ONNX session or a channel is built once)."""
    from simulator.policies import resolve

    return resolve(spec, threads=1)


def cells(config: ABConfig) -> list[Cell]:
    """Every cell of the A/B, both arms of a day next to each other."""
    return [
        Cell(inst, seed, arm, config.a if arm == "a" else config.b)
        for inst in config.instances
        for seed in range(config.seeds)
        for arm in ARMS
    ]


def run_cell(
    cell: Cell, out: str, noise: NoiseConfig, interval: int, resolver: Callable[[str], Policy] | None = None
) -> dict[str, Any]:
    """Simulate one cell (in a worker process) and cache its result; returns it."""
    from simulator.run import run_episode
    from simulator.sources import load_spec

    start = time.perf_counter()
    inst = perturb(load_spec(cell.instance), cell.seed, noise)
    policy = (resolver or _cached_resolve)(cell.policy)
    res = run_episode(inst, policy, seed=policy_seed(cell.instance, cell.seed), config=SimConfig(interval))
    placement = inst.order_placement
    ctd_all = res.records.order_dropoff - placement
    delivered = (res.records.order_dropoff >= 0) & (ctd_all <= inst.params.max_ctd)
    hour = np.minimum(placement[delivered] // 60, HOURS - 1)
    payload = {
        "cell": asdict(cell),
        "instance_name": inst.name,
        "metrics": res.metrics,
        # Every order's click-to-door, -1 where undelivered: both arms of a day share the instance, so the
        # report can compare them on the orders both deliver (free of the survivorship of dropped orders).
        "order_ctd": np.where(delivered, ctd_all, -1).astype(int).tolist(),
        "hour_ctd_sum": np.bincount(hour, weights=ctd_all[delivered], minlength=HOURS).tolist(),
        "hour_count": np.bincount(hour, minlength=HOURS).tolist(),
        "epochs": res.epochs,
        "seconds": time.perf_counter() - start,
    }
    write_json(cell.path(Path(out)), payload)
    return payload


def load_cell(cell: Cell, out: Path) -> dict[str, Any] | None:
    """The cached result of a cell, or None when absent or unreadable (it is then rerun)."""
    payload = read_json(cell.path(out))
    # A cell cached by an older version (no per-order click-to-door) is rerun, as an unreadable one is.
    fresh = payload is not None and payload.get("cell") == asdict(cell) and isinstance(payload.get("order_ctd"), list)
    return payload if fresh else None


def _prepare(out: Path, config: ABConfig) -> None:
    """Create the out dir or check that it holds this very A/B (same arguments)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ABError(f"--out {out}: {out_problem(exc)}") from None
    man_path = out / MANIFEST
    args = json.loads(json.dumps(config.args()))
    if man_path.exists():
        try:
            man = json.loads(man_path.read_text())
        except json.JSONDecodeError:
            raise ABError(f"{man_path}: not valid JSON; remove the folder or choose another --out") from None
        if man.get("format") != FORMAT:
            raise ABError(f"{man_path}: not an A/B folder")
        version = man.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ABError(f"{man_path}: field 'version' is {version!r}, not an integer; not an A/B folder")
        if version > FORMAT_VERSION:
            raise ABError(f"{man_path}: written by a newer version ({version}); upgrade to resume it")
        if man.get("args") != args:
            raise ABError(
                f"{out}: holds an A/B with other arguments ({differences(man.get('args'), args)}); use a new --out "
                "or the same arguments to resume"
            )
        if version == FORMAT_VERSION:
            return
        # Resumed from an older version: its cells are rerun in this format, so an older checkout must now
        # refuse the folder instead of misreading them.
    try:
        write_json(man_path, {"format": FORMAT, "version": FORMAT_VERSION, "args": args})
    except OSError as exc:  # a read-only folder
        raise ABError(f"--out {out}: {out_problem(exc)}") from None


def _write_status(out: Path, total: int, missing: list[Cell], error: str | None) -> None:
    lines = [
        "# A/B INCOMPLETE — no report was written",
        "",
        f"{total - len(missing)} of {total} cells finished (cached under `cells/`).",
    ]
    if error:
        lines += ["", f"Stopped by: {error}"]
    lines += ["", "Rerun the same command to resume; missing cells:", ""]
    lines += [f"- {c.instance} seed {c.seed} arm {c.arm.upper()} ({c.policy})" for c in missing[:200]]
    if len(missing) > 200:
        lines.append(f"- ... and {len(missing) - 200} more")
    write_text(out / STATUS, "\n".join(lines) + "\n")


def _describe_failure(cell: Cell, exc: BaseException) -> str:
    where = f"{cell.instance} seed {cell.seed}"
    return f"arm {cell.arm.upper()} ({cell.policy}) failed on {where}: {type(exc).__name__}: {exc}"


def _execute(todo: list[Cell], args: tuple[Any, ...], jobs: int, bar: tqdm[Any]) -> tuple[int, str | None]:
    """Run the cells; returns (cells run, first failure). A failure stops the remaining cells."""
    error: str | None = None
    ran = 0
    if jobs <= 1:
        for c in todo:
            try:
                run_cell(c, *args)
            except Exception as exc:  # any policy/endpoint failure stops the run, cells so far are kept
                error = _describe_failure(c, exc)
                break
            ran += 1
            bar.update()
    else:
        with worker_pool(max(1, jobs)) as pool:
            futures: dict[Future[dict[str, Any]], Cell] = {pool.submit(run_cell, c, *args): c for c in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    failure = fut.exception()
                    if failure is not None:
                        error = error or _describe_failure(futures[fut], failure)
                    else:
                        ran += 1
                        bar.update()
                if error:
                    for fut in pending:
                        fut.cancel()
                    # Cells already running finish and are cached; queued ones are dropped.
                    for fut in wait(pending).done:
                        if not fut.cancelled() and fut.exception() is None:
                            ran += 1
                            bar.update()
                    break
    return ran, error


def run_ab(
    config: ABConfig,
    out: str | Path,
    jobs: int = 1,
    progress: bool = True,
    resolver: Callable[[str], Policy] | None = None,
) -> ABRun:
    """Run (or resume) the A/B into ``out``; writes the report only when every cell is done.

    ``resolver`` replaces :func:`simulator.policies.resolve` (tests inject failing policies); with
    ``jobs > 1`` it must be picklable.
    """
    from simulator.ab.report import write_report

    out = Path(out)
    if config.a == "" or config.b == "" or not config.instances or config.seeds < 1:
        raise ABError("an A/B needs two policies, at least one instance and --seeds >= 1")
    _prepare(out, config)
    todo_cells = cells(config)
    done = {c for c in todo_cells if load_cell(c, out) is not None}
    todo = [c for c in todo_cells if c not in done]
    total = len(todo_cells)
    if todo:
        # A report from an earlier run must never sit beside missing cells as if it were whole.
        for name in ("report.md", "report.json"):
            (out / name).unlink(missing_ok=True)
    bar = tqdm(total=total, initial=len(done), disable=not progress, unit="day", desc="A/B")
    args = (str(out), config.noise, config.interval, resolver)
    try:
        ran, error = _execute(todo, args, jobs, bar)
    except KeyboardInterrupt:
        bar.close()
        _write_status(out, total, [c for c in todo_cells if load_cell(c, out) is None], "interrupted")
        raise
    bar.close()
    results = {c: load_cell(c, out) for c in todo_cells}
    missing = [c for c, r in results.items() if r is None]
    if missing:
        _write_status(out, total, missing, error)
        return ABRun(out, total, total - len(missing), ran, False, error or "some cells are missing")
    (out / STATUS).unlink(missing_ok=True)
    report = write_report(out, config, {c: r for c, r in results.items() if r is not None})
    return ABRun(out, total, total, ran, True, None, report)

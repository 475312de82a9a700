"""Run a replay: shadow, re-simulation and off-policy estimates over historical days, resumable.

Each (mode, day) result is cached atomically under ``OUT/<mode>/``; a rerun with the same arguments
skips them. A failing policy or endpoint stops the run with a message naming the day and decision;
``OUT/STATUS.md`` then lists what is missing and no ``report.md`` exists until every part is done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dispatch.candidates import CandidateConfig
from dispatch.policy import Policy
from simulator.ab.files import out_problem, read_json, write_json, write_text
from simulator.engine import RewardConfig
from simulator.replay.days import ReplayDay
from simulator.replay.shadow import ReplayStopped, ShadowConfig
from simulator.resume import differences

FORMAT = "dispatch-replay"
FORMAT_VERSION = 1
MANIFEST = "replay.json"
STATUS = "STATUS.md"
MODES = ("shadow", "resim", "ope")


class ReplayError(RuntimeError):
    """A replay that cannot start; the message says why."""


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay through which policy."""

    policy: str
    modes: tuple[str, ...] = MODES
    source: dict[str, Any] = field(default_factory=dict)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    samples: int = 8
    truth_samples: int = 0
    reward: RewardConfig = field(default_factory=RewardConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)

    def args(self) -> dict[str, Any]:
        """The arguments cached results depend on (pace and error tolerance do not change results)."""
        d = asdict(self)
        d["modes"] = list(self.modes)
        d["shadow"] = {"top": self.shadow.top}
        return json.loads(json.dumps(d))


@dataclass
class ReplayRun:
    """What a call to :func:`run_replay` achieved."""

    out: Path
    total: int
    done: int
    ran: int
    complete: bool
    error: str | None = None
    report: dict[str, Any] | None = None


def _prepare(out: Path, config: ReplayConfig) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplayError(f"--out {out}: {out_problem(exc)}") from None
    path = out / MANIFEST
    if path.exists():
        man = read_json(path)
        if man is None or man.get("format") != FORMAT:
            raise ReplayError(f"{path}: not a replay folder; choose another --out")
        if man.get("version", 0) > FORMAT_VERSION:
            raise ReplayError(f"{path}: written by a newer version; upgrade to resume it")
        if man.get("args") != config.args():
            raise ReplayError(
                f"{out}: holds a replay with other arguments ({differences(man.get('args'), config.args())}); "
                "use a new --out or the same arguments to resume"
            )
        return
    try:
        write_json(path, {"format": FORMAT, "version": FORMAT_VERSION, "args": config.args()})
    except OSError as exc:  # a read-only folder
        raise ReplayError(f"--out {out}: {out_problem(exc)}") from None


def _write_status(out: Path, total: int, missing: list[tuple[str, ReplayDay]], error: str | None) -> None:
    lines = ["# Replay INCOMPLETE — no report was written", "", f"{total - len(missing)} of {total} parts finished."]
    if error:
        lines += ["", f"Stopped by: {error}"]
    lines += ["", "Rerun the same command to resume; missing:", ""]
    lines += [f"- {mode}: {d.name} ({d.key})" for mode, d in missing[:200]]
    write_text(out / STATUS, "\n".join(lines) + "\n")


def run_replay(
    config: ReplayConfig,
    days: list[ReplayDay],
    out: str | Path,
    progress: bool = True,
    resolver: Callable[[str], Policy] | None = None,
) -> ReplayRun:
    """Run (or resume) every mode over every day; the report is written only when all are done."""
    from simulator.policies import resolve
    from simulator.replay.ope import ope_day, resolve_target
    from simulator.replay.report import write_report
    from simulator.replay.resim import resim_day
    from simulator.replay.shadow import shadow_day

    out = Path(out)
    if not days:
        raise ReplayError("nothing to replay: no days")
    unknown = [m for m in config.modes if m not in MODES]
    if unknown or not config.modes:
        raise ReplayError(f"modes {unknown or '(none)'}: expected some of {', '.join(MODES)}")
    if "ope" in config.modes and any(d.logged is None for d in days):
        raise ReplayError("off-policy estimates need logged days (behaviour probabilities); instance days have none")
    if "ope" in config.modes and config.candidates.lookahead:
        # The targets do not yet model reservations of couriers not free, so every weight would be wrong.
        raise ReplayError(
            f"off-policy estimates do not support logs made with a lookahead ({config.candidates.lookahead} min) yet"
        )
    if resolver is None:
        cands = config.candidates

        def resolver(spec: str) -> Policy:
            return resolve(spec, candidates=cands)

    target = resolve_target(config.policy, config.candidates) if "ope" in config.modes else None
    _prepare(out, config)
    parts = [(m, d) for m in config.modes for d in days]
    paths = {(m, d.key): out / m / f"{d.key}.json" for m, d in parts}
    todo = [(m, d) for m, d in parts if read_json(paths[m, d.key]) is None]
    if todo:
        for name in ("report.md", "report.json"):
            (out / name).unlink(missing_ok=True)
    bar = tqdm(total=len(parts), initial=len(parts) - len(todo), disable=not progress, unit="day", desc="replay")
    policy: Policy | None = None
    error: str | None = None
    ran = 0
    try:
        for mode, day in todo:
            try:
                if mode == "ope":
                    assert target is not None
                    payload = ope_day(day, target, config.samples, config.reward, config.truth_samples)
                else:
                    policy = policy or resolver(config.policy)
                    if mode == "shadow":
                        payload = shadow_day(day, policy, resolver, config.shadow)
                    else:
                        payload = resim_day(day, policy, resolver)
            except ReplayStopped as exc:
                error = str(exc)
                break
            except Exception as exc:  # an endpoint or policy failure during re-simulation/OPE stops the run too
                error = f"{mode} of day {day.name} ({day.key}) failed: {type(exc).__name__}: {exc}"
                break
            write_json(paths[mode, day.key], payload)
            ran += 1
            bar.update()
    except KeyboardInterrupt:
        bar.close()
        _write_status(out, len(parts), [(m, d) for m, d in parts if read_json(paths[m, d.key]) is None], "interrupted")
        raise
    bar.close()
    results = {k: read_json(p) for k, p in paths.items()}
    missing = [(m, d) for m, d in parts if results[m, d.key] is None]
    if missing:
        _write_status(out, len(parts), missing, error)
        return ReplayRun(out, len(parts), len(parts) - len(missing), ran, False, error or "some parts are missing")
    (out / STATUS).unlink(missing_ok=True)
    by_mode = {m: [results[m, d.key] for d in days] for m in config.modes}
    report = write_report(out, config, {m: [r for r in rs if r is not None] for m, rs in by_mode.items()})
    return ReplayRun(out, len(parts), len(parts), ran, True, None, report)

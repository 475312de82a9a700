"""Generate a log dataset: days × instances under a recipe, in parallel, resumable after a crash.

The plan (which episode is which instance, day, recipe and seed) is a pure function of the
arguments, so a rerun with the same arguments continues where a killed run stopped: days listed in
the manifest with matching part-file hashes are kept; everything else is (re)generated. Each
episode's part files are deterministic, so a resumed dataset equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dispatch.candidates import CandidateConfig
from simulator import SIMULATOR_VERSION
from simulator.batch import worker_pool
from simulator.behaviour import recipe_for_day
from simulator.engine import RewardConfig, SimConfig
from simulator.folder_lock import exclusive
from simulator.logs.card import CARD, HISTOGRAM
from simulator.logs.dataset import MANIFEST, LogError, read_manifest
from simulator.logs.schema import FORMAT, SCHEMA_VERSION
from simulator.logs.writer import EpisodeRecorder, sha256_file
from simulator.resume import differences


@dataclass(frozen=True)
class EpisodeSpec:
    """One logged day of the plan."""

    episode: int
    instance: str
    day: int
    recipe: str
    seed: int


def plan(recipe: str, instances: list[str], days: int, seed: int) -> list[EpisodeSpec]:
    """Every (day, instance) of a dataset with its recipe and its own seed."""
    out = []
    for day in range(days):
        for i, inst in enumerate(instances):
            ep = day * len(instances) + i
            ep_seed = int(np.random.SeedSequence([seed, ep]).generate_state(1)[0])
            out.append(EpisodeSpec(ep, inst, day, recipe_for_day(recipe, ep), ep_seed))
    return out


def code_version() -> str:
    """The git commit of the code (with -dirty), or the package version outside a checkout."""
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"v{SIMULATOR_VERSION}"


def _run(
    spec: EpisodeSpec, folder: str, sim: SimConfig, cands: CandidateConfig, reward: RewardConfig
) -> dict[str, Any]:
    """Worker: simulate and write one day; returns its manifest entry."""
    from simulator.behaviour import BehaviourPolicy
    from simulator.run import run_episode
    from simulator.sources import load_spec

    inst = load_spec(spec.instance)
    rec = EpisodeRecorder(spec.episode)
    result = run_episode(
        inst, BehaviourPolicy(spec.recipe, cands), seed=spec.seed, config=sim, reward=reward, on_decision=rec.record
    )
    rec.finish(inst, spec.recipe, spec.seed, result)
    files = rec.write(Path(folder))
    return {
        **asdict(spec),
        "instance_name": inst.name,
        "files": files,
        "epochs": result.epochs,
        "total_reward": result.total_reward,
        "ctd_mean": result.metrics["ctd_mean"],
        "undelivered_pct": result.metrics["undelivered_pct"],
    }


def _write_manifest(folder: Path, man: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    try:
        tmp.write_text(json.dumps(man, indent=1, sort_keys=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / MANIFEST)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk must not also leave a half-written manifest beside the real one
        raise


def _drop_stale_card(out: Path) -> None:
    """Remove a dataset card written before the days about to be added (it would describe fewer days)."""
    stale = [out / name for name in (CARD, HISTOGRAM) if (out / name).is_file()]
    for path in stale:
        path.unlink()
    if stale:
        print(
            f"{out}: removed {CARD} (written before these days); run 'dispatch logs card {out}' again", file=sys.stderr
        )


def _with_defaults(args: Any) -> Any:
    """A manifest's arguments with reward fields added since it was written set to their defaults.

    A field is only ever added with a default that keeps the old behaviour, so a dataset made before it
    existed resumes instead of being refused as made with other arguments.
    """
    if not isinstance(args, dict) or not isinstance(args.get("reward"), dict):
        return args
    return {**args, "reward": {**asdict(RewardConfig()), **args["reward"]}}


def generate(
    folder: str | Path,
    recipe: str,
    instances: list[str],
    days: int,
    seed: int = 0,
    sim: SimConfig | None = None,
    cands: CandidateConfig | None = None,
    reward: RewardConfig | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Create or resume the dataset in ``folder``; returns its manifest.

    One run at a time per folder: a second is refused (FolderBusy) while the first holds it.
    """
    out = Path(folder)
    with exclusive(out, "--out"):
        return _generate(out, recipe, instances, days, seed, sim, cands, reward, jobs, progress)


def _generate(
    out: Path,
    recipe: str,
    instances: list[str],
    days: int,
    seed: int,
    sim: SimConfig | None,
    cands: CandidateConfig | None,
    reward: RewardConfig | None,
    jobs: int,
    progress: bool,
) -> dict[str, Any]:
    sim, cands, reward = sim or SimConfig(), cands or CandidateConfig(), reward or RewardConfig()
    args = {
        "recipe": recipe,
        "instances": instances,
        "days": days,
        "seed": seed,
        "sim": asdict(sim),
        "candidates": cands.to_dict(),
        "reward": asdict(reward),
    }
    specs = plan(recipe, instances, days, seed)
    if (out / MANIFEST).exists():
        man = read_manifest(out)
        then, now = _with_defaults(man.get("args")), json.loads(json.dumps(args))
        if then != now:
            raise LogError(
                f"{out}: holds a dataset made with other arguments ({differences(then, now)}); "
                "use a new folder or the same arguments to resume"
            )
    else:
        man = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "simulator_version": SIMULATOR_VERSION,
            "code_version": code_version(),
            "args": args,
            "episodes": {},
            "complete": False,
        }
    done = set()
    for key, entry in list(man["episodes"].items()):
        ok = all(
            (out / f["path"]).is_file() and sha256_file(out / f["path"]) == f["sha256"] for f in entry["files"].values()
        )
        if ok:
            done.add(int(key))
        else:
            del man["episodes"][key]
    for tmp in out.glob("*/*.tmp*"):
        tmp.unlink()
    todo = [s for s in specs if s.episode not in done]
    if todo and done:
        _drop_stale_card(out)
    man["complete"] = not todo
    _write_manifest(out, man)
    bar = tqdm(total=len(specs), initial=len(done), disable=not progress, unit="day", desc=f"logs {recipe}")
    if todo:
        with worker_pool(max(1, jobs)) as pool:
            futures = [pool.submit(_run, s, str(out), sim, cands, reward) for s in todo]
            for fut in as_completed(futures):
                entry = fut.result()
                man["episodes"][str(entry["episode"])] = entry
                _write_manifest(out, man)
                bar.update()
    bar.close()
    man["complete"] = True
    _write_manifest(out, man)
    return man

"""Training harness: config, seeded loop, periodic evaluation, CSV/TensorBoard logs, checkpoints, resume.

A checkpoint holds the networks, optimisers, the step and every RNG stream (python, numpy, torch global,
the harness's minibatch/permutation generator), so resuming gives bit-identical results on CPU.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulator.folder_lock import exclusive
from training.algos import make_algorithm
from training.algos.base import Algorithm, DataInfo
from training.data import DataSource, resolve_data, reward_scale
from training.defaults import GAME_BATCH

CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults train InSPO on XOR ``ab_ba``."""

    algo: str = "inspo"
    data: str = "xor:ab_ba"
    seed: int = 0
    data_seed: int = 0
    steps: int = 3000
    batch_size: int = GAME_BATCH
    eval_every: int = 500
    ckpt_every: int = 500
    out: str = "runs/default"
    resume: bool = False
    stop_after: int | None = None  # stop (as if killed) after this many steps, checkpoint kept
    tensorboard: bool = True
    progress: bool = True
    eval_seed: int = 12345
    algo_params: dict[str, Any] = field(default_factory=dict)


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG stream the run uses, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state: Any = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    py: Any = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state: Any = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])


def save_checkpoint(path: Path, algo: Algorithm, step: int, cfg: TrainConfig, generator: torch.Generator) -> None:
    """Atomically write a versioned checkpoint."""
    payload = {
        "format_version": CHECKPOINT_VERSION,
        "step": step,
        "config": json.dumps(asdict(cfg)),
        "algo": algo.state_dict(),
        "rng": rng_state(generator),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's can run to a page)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _load_failure(exc: BaseException) -> str:
    """The cause of a failed ``torch.load`` in a few words, without torch's page of advice."""
    if isinstance(exc, EOFError):
        return "empty or truncated file"
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:  # the safe unpickler met something other than tensors and plain data
        cause = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        return f"not tensors and plain data: {cause}" if cause else "not tensors and plain data"
    return first_line(exc).split(". ")[0]


def load_checkpoint(path: Path, map_location: str | None = None, version: int = CHECKPOINT_VERSION) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only); ValueError names the file for a foreign or other-version one."""
    try:
        payload: Any = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # a truncated or foreign file: say which file and why, in one line
        raise ValueError(f"{path}: not a checkpoint this code can read ({_load_failure(exc)})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("algo"), dict):
        raise ValueError(f"{path}: not a checkpoint this code can read (no 'algo' state)")
    if payload.get("format_version") != version:
        raise ValueError(f"{path}: checkpoint format {payload.get('format_version')}, this code reads {version}")
    return payload


def restore(path: Path, payload: dict[str, Any], algo: Algorithm) -> int:
    """Load a checkpoint's networks and optimisers into ``algo``; returns its step. ValueError names the file."""
    try:
        algo.load_state_dict(payload["algo"])
        return int(payload["step"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # other networks: another algo or --set
        if isinstance(exc, KeyError):
            why = f"it has no state for {exc.args[0]!r}"
        else:  # torch's first line only says which module; the second says what did not fit
            why = " ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:2])
        raise ValueError(
            f"{path}: does not fit the networks of this --algo, --set and data; "
            f"a game's observation size may have changed since the run was made ({why})"
        ) from None


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; ValueError says why it cannot be had (the caller names the file or flag)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's config.json, checked to hold its ``train`` and ``algo`` sections; ValueError names the file."""
    try:
        resolved = read_json(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(resolved, dict):
        raise ValueError(f"{path}: not a training run config (a JSON object with 'train' and 'algo')")
    for key in ("train", "algo"):
        if not isinstance(resolved.get(key), dict):
            raise ValueError(f"{path}: field {key!r} is missing or not an object")
    return resolved


def check_out(out: Path, resume: bool) -> None:
    """Refuse an ``--out`` that is not a folder, or that holds a run and ``--resume`` was not given.

    Called before anything is written: a run is continued on request, never silently overwritten.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if not resume and any((out / name).exists() for name in (CONFIG_NAME, CHECKPOINT_NAME)):
        raise ValueError(
            f"--out {out} already holds a training run; pass --resume to continue it or choose another --out"
        )


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of ``path``, None when absent: whether a file changed since it was read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def check_still_free(out: Path, resume: bool, checkpoint: Path, seen: tuple[int, int] | None) -> None:
    """Under ``out``'s lock: what was checked before it still holds. No run appeared there meanwhile and, on
    ``--resume``, the checkpoint is still the one read (``seen``: its :func:`file_stamp` then); another run that
    ended in between must not be overwritten from its older state."""
    check_out(out, resume)
    if resume and file_stamp(checkpoint) != seen:
        raise ValueError(f"--out {out}: another run wrote its checkpoint while this one started; run again to resume")


@contextmanager
def config_kept_once_checkpointed(out: Path, checkpoint: Path, logs: tuple[str, ...] = ()) -> Iterator[None]:
    """Remove ``out``'s config.json and the run's ``logs`` if the block fails (out of memory, interrupted) before
    ``checkpoint`` exists.

    A config without a checkpoint holds nothing to resume, and alone it would make the next start refuse the
    folder (or, with ``--resume``, continue with the settings that just failed); the logs of those steps would
    be logged again by the next run.
    """
    try:
        yield
    except BaseException:
        if not checkpoint.exists():
            for name in (CONFIG_NAME, *logs):
                (out / name).unlink(missing_ok=True)
        raise


def _same_setting(key: str, was: Any, now: Any) -> bool:
    if was == now:
        return True
    # One dataset folder named two ways (relative, absolute, through a link) is the same data.
    if key == "data" and isinstance(was, str) and os.path.isdir(was) and os.path.isdir(now):
        return os.path.samefile(was, now)
    return False


# Algorithm settings added after runs were already being made, with the value that trains as the code before them did.
LEGACY_SETTINGS: dict[str, Any] = {"beta_anneal_steps": 0}


def check_resume(out: Path, resolved: dict[str, Any], flags: dict[str, str]) -> None:
    """Refuse to resume the run in ``out`` with settings other than those it was made with.

    ``flags`` maps each flag that must match to its key in the ``train`` section (``{"--algo": "algo"}``);
    every algorithm setting must match too. A setting the run did not record (older code) is compared with its
    ``LEGACY_SETTINGS`` value where it has one, and otherwise not at all.
    """
    path = out / CONFIG_NAME
    if not path.is_file():
        return  # killed before its config was written: nothing to compare, nothing to lose
    old = read_run_config(path)
    # A setting added after the run was made is compared with the value that reproduces the code it ran with.
    recorded_algo = {**{k: v for k, v in LEGACY_SETTINGS.items() if k in resolved["algo"]}, **old["algo"]}
    changes = [(f"{flag} ", old["train"], key, resolved["train"][key]) for flag, key in flags.items()]
    changes += [(f"--set {key}=", recorded_algo, key, now) for key, now in resolved["algo"].items()]
    for flag, recorded, key, now in changes:
        if key in recorded and not _same_setting(key, recorded[key], now):
            raise ValueError(
                f"{out} was made with {flag}{recorded[key]}, not {now}; --resume continues a run with its own settings"
            )


class Policy:
    """Numpy adapter of an algorithm's policy for the game evaluators."""

    def __init__(self, algo: Algorithm) -> None:
        self.algo = algo

    def __call__(self, obs: np.ndarray, legal: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logp = self.algo.log_probs(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(legal))
        return logp.exp().numpy()


class RunLog:
    """CSV of evaluations (rewritten atomically) and optional TensorBoard scalars."""

    def __init__(self, out: Path, cfg: TrainConfig, resolved: dict[str, Any], start_step: int) -> None:
        self.csv_path = out / "eval.csv"
        self.rows: list[dict[str, Any]] = []
        if start_step > 0 and self.csv_path.exists():
            with self.csv_path.open() as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        self.writer: Any = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=start_step if start_step else None)
            self.writer.add_text("config", "```\n" + json.dumps(resolved, indent=2) + "\n```", start_step)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def eval_row(self, step: int, values: dict[str, float]) -> None:
        self.rows.append({"step": step, **values})
        self.scalars(step, values, "eval")
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.csv_path, buf.getvalue().encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build(cfg: TrainConfig) -> tuple[DataSource, dict[str, torch.Tensor], Algorithm, torch.Generator]:
    """Seed everything, load the data and construct the algorithm (before any resume)."""
    torch.set_num_threads(1)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    source = resolve_data(cfg.data, cfg.data_seed)
    data = source.dataset.transitions().to_torch()
    data["rewards"] = data["rewards"] / reward_scale(source)
    info = DataInfo(
        n_agents=source.dataset.n_agents,
        n_actions=source.dataset.n_actions,
        obs_dim=source.dataset.obs_dim,
        state_dim=source.dataset.state_dim,
        gamma=source.gamma,
    )
    algo = make_algorithm(cfg.algo, info, cfg.algo_params, generator)
    return source, data, algo, generator


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns the final evaluation and the resolved config."""
    from tqdm import tqdm

    out = Path(cfg.out)
    check_out(out, cfg.resume)
    ckpt_path = out / CHECKPOINT_NAME
    seen = file_stamp(ckpt_path)
    source, data, algo, generator = build(cfg)
    resolved = {
        "train": asdict(cfg),
        "algo": algo.config_dict(),
        "code_version": code_version(),
        "reward_scale": reward_scale(source),
        "gamma": source.gamma,
    }
    start = 0
    if cfg.resume:
        flags = {"--algo": "algo", "--data": "data", "--data-seed": "data_seed", "--batch-size": "batch_size"}
        check_resume(out, resolved, flags)
        if ckpt_path.exists():
            payload = load_checkpoint(ckpt_path)
            start = restore(ckpt_path, payload, algo)
            try:
                set_rng_state(payload["rng"], generator)
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{ckpt_path}: unreadable RNG state ({first_line(exc)})") from None
            if start > cfg.steps:
                raise ValueError(f"--steps {cfg.steps} is below the {start} steps {out} has already trained")
    # Only now, with every input checked, does the run folder appear, locked: one run per folder. The folder is
    # checked again under the lock, since another run may have started here meanwhile.
    with exclusive(out, "--out"):
        check_still_free(out, cfg.resume, ckpt_path, seen)
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(resolved, indent=2).encode())
        log = RunLog(out, cfg, resolved, start)
        n = int(data["rewards"].shape[0])
        policy = Policy(algo)
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        bar = tqdm(
            range(start, end),
            initial=start,
            total=cfg.steps,
            disable=not cfg.progress,
            desc=cfg.algo,
            dynamic_ncols=True,
        )
        with config_kept_once_checkpointed(out, ckpt_path, logs=(log.csv_path.name,)):
            for step in bar:
                idx = torch.randint(n, (cfg.batch_size,), generator=generator)
                batch = {k: (v[idx] if v is not None else None) for k, v in data.items()}
                metrics = algo.update(batch, step)
                done = step + 1
                if done % 100 == 0:
                    log.scalars(done, metrics, "train")
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    result = source.evaluate(policy, cfg.eval_seed)
                    log.eval_row(done, result)
                    bar.set_postfix({k: round(v, 3) for k, v in list(result.items())[:2]})
                if done % cfg.ckpt_every == 0 or done == cfg.steps or done == end:
                    save_checkpoint(ckpt_path, algo, done, cfg, generator)
        bar.close()
        log.close()
        if end < cfg.steps:
            return {"stopped_at": end, "config": resolved}
        final = source.evaluate(policy, cfg.eval_seed)
        summary = {"final": final, "config": resolved, "steps": cfg.steps}
        atomic_write_bytes(out / "final.json", json.dumps(summary, indent=2).encode())
        return summary


def final_parameters(out: str | Path) -> dict[str, torch.Tensor]:
    """Flat name → tensor map of every network in a run's checkpoint (for bit-identity checks)."""
    payload = load_checkpoint(Path(out) / CHECKPOINT_NAME)
    flat: dict[str, torch.Tensor] = {}
    for mod, sd in payload["algo"]["modules"].items():
        for k, v in sd.items():
            flat[f"{mod}.{k}"] = v
    return flat

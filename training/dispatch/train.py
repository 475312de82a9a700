"""Train a dispatch policy (BC or InSPO) on a log dataset, with checkpoints and full resume.

``device``: ``cpu`` (default; bit-identical resume), ``cuda`` or ``auto``. Minibatches are built on the
CPU and moved; every random draw comes from CPU streams, so a GPU run samples the same minibatches and
agent orders as a CPU run, and differs only by floating-point reduction order.

The loop samples minibatches of decision epochs from the training view (:mod:`simulator.logs.view`),
calls the algorithm's update, logs CSV rows, and checkpoints networks, optimisers, step and RNG streams
atomically, so ``--resume`` continues bit-identically on CPU. Rewards are divided by a scale (the
99th percentile of |r| in the data) so the algorithms' constants mean the same on any dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from simulator.folder_lock import exclusive
from simulator.logs.dataset import MANIFEST, LogError
from simulator.logs.view import STATE_FEATURES
from simulator.logs.view import load as load_view
from training.algos.base import DataInfo
from training.defaults import DISPATCH_BATCH
from training.dispatch.algo import make
from training.dispatch.batches import minibatch, returns_to_go, to_device
from training.harness import (
    CONFIG_NAME,
    atomic_write_bytes,
    check_out,
    check_resume,
    check_still_free,
    code_version,
    config_kept_once_checkpointed,
    file_stamp,
    first_line,
    load_checkpoint,
    restore,
    rng_state,
    set_rng_state,
)

CHECKPOINT = "checkpoint.pt"
LOG_HEADER = ["step", "metric", "value"]
CHECKPOINT_VERSION = 1
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class DispatchTrainConfig:
    """A dispatch training run."""

    data: str = ""
    algo: str = "inspo"
    steps: int = 3000
    batch_size: int = DISPATCH_BATCH
    gamma: float = 0.95
    seed: int = 0
    out: str = "runs/dispatch"
    ckpt_every: int = 500
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True
    device: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)


def _save(
    path: Path, algo: Any, step: int, cfg: DispatchTrainConfig, gen: torch.Generator, np_rng: np.random.Generator
) -> None:
    payload = {
        "format_version": CHECKPOINT_VERSION,
        "step": step,
        "config": json.dumps(asdict(cfg)),
        "algo": algo.state_dict(),
        "rng": rng_state(gen),
        "np_rng": json.dumps(np_rng.bit_generator.state),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (refused, with the reason, where CUDA is unusable) or ``auto`` (CUDA when usable)."""
    if name not in DEVICES:
        raise ValueError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    usable = torch.cuda.is_available()
    if name == "cuda" and not usable:
        cuda = torch.version.cuda  # type: ignore[attr-defined]
        build = "a CPU-only build" if cuda is None else f"built for CUDA {cuda}, no GPU seen"
        raise ValueError(f"device 'cuda' requested but CUDA is not usable here (torch {torch.__version__}: {build})")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and usable) else "cpu")


def _load(path: Path) -> dict[str, Any]:
    """A dispatch checkpoint; ValueError names the file when it is foreign, truncated or of another version."""
    # map_location: a checkpoint written on a GPU loads on a CPU-only machine (export, resume there).
    return load_checkpoint(path, map_location="cpu", version=CHECKPOINT_VERSION)


def train(cfg: DispatchTrainConfig) -> dict[str, Any]:
    """Run or resume training; returns the resolved config and the run statistics."""
    device = resolve_device(cfg.device)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    check_out(out, cfg.resume)
    seen = file_stamp(out / CHECKPOINT)
    view = load_view(cfg.data, progress=cfg.progress)
    live = np.flatnonzero(np.diff(view.agent_offset) > 0)
    if live.size == 0:  # no finished day, or days where no courier was ever free to decide
        why = "no logged day (was its generation interrupted?)" if view.n_epochs == 0 else "no courier decision"
        raise LogError(f"{Path(cfg.data) / MANIFEST}: {why}; nothing to train on")
    scale = float(np.percentile(np.abs(view.reward), 99)) or 1.0
    view.reward = (view.reward / scale).astype(np.float32)
    info = DataInfo(n_agents=0, n_actions=view.k + 1, obs_dim=0, state_dim=len(STATE_FEATURES), gamma=cfg.gamma)
    algo = make(cfg.algo, dict(cfg.params), info, gen)
    returns = returns_to_go(view, cfg.gamma) if getattr(algo.config, "critic_target", "td") == "mc" else None
    for module in algo.modules.values():
        module.to(device)  # parameters move in place, so the optimisers built over them stay valid
    train_cfg, algo_cfg = asdict(cfg), algo.config_dict()
    start = 0
    if cfg.resume:
        flags = {"--algo": "algo", "--data": "data", "--gamma": "gamma", "--batch-size": "batch_size"}
        check_resume(out, {"train": train_cfg, "algo": algo_cfg}, flags)
        if (out / CHECKPOINT).exists():
            payload = _load(out / CHECKPOINT)
            start = restore(out / CHECKPOINT, payload, algo)
            try:
                set_rng_state(payload["rng"], gen)
                np_rng.bit_generator.state = json.loads(payload["np_rng"])
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{out / CHECKPOINT}: unreadable RNG state ({first_line(exc)})") from None
            if start > cfg.steps:
                raise ValueError(f"--steps {cfg.steps} is below the {start} steps {out} has already trained")
    resolved = {
        "train": train_cfg,
        "algo": algo_cfg,
        "code_version": code_version(),
        "device": str(device),
        "reward_scale": scale,
        "data_manifest": str(Path(cfg.data) / "manifest.json"),
        "data_epochs": view.n_epochs,
        "data_courier_decisions": view.n_agent_rows,
    }
    # Only now, with every input checked, does the run folder appear, locked: one run per folder. The folder is
    # checked again under the lock, since another run may have started here meanwhile.
    with exclusive(out, "--out"):
        check_still_free(out, cfg.resume, out / CHECKPOINT, seen)
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(resolved, indent=1).encode())
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        log_path = out / "train.csv"
        fresh = not (cfg.resume and log_path.exists())
        if not fresh:
            # Rows logged after the checkpoint we resume from (a kill between checkpoints) are logged again.
            with open(log_path, newline="") as fh:
                kept = [LOG_HEADER] + [r for r in csv.reader(fh) if r and r[0].isdigit() and int(r[0]) <= start]
            buf = io.StringIO()
            csv.writer(buf).writerows(kept)
            atomic_write_bytes(log_path, buf.getvalue().encode())
        rows, started = 0, time.perf_counter()
        checkpointed = config_kept_once_checkpointed(out, out / CHECKPOINT, logs=(log_path.name,))
        with checkpointed, open(log_path, "w" if fresh else "a", newline="") as fh:
            writer = csv.writer(fh)
            if fresh:
                writer.writerow(LOG_HEADER)
            for step in tqdm(
                range(start, end), initial=start, total=cfg.steps, disable=not cfg.progress, desc=cfg.algo
            ):
                idx = np_rng.choice(live, size=min(cfg.batch_size, live.size), replace=False)
                batch = to_device(minibatch(view, idx, returns), device)
                metrics = algo.update(batch, step)
                rows += int(batch["agent_mask"].sum())  # type: ignore[attr-defined]
                done = step + 1
                if done % 100 == 0:
                    writer.writerows([done, k, f"{v:.6g}"] for k, v in metrics.items())
                if done % cfg.ckpt_every == 0 or done == end:
                    # The log reaches the disk before the checkpoint that vouches for it: a kill after the
                    # checkpoint must not take rows that a resume from it will not log again.
                    fh.flush()
                    os.fsync(fh.fileno())
                    _save(out / CHECKPOINT, algo, done, cfg, gen, np_rng)
        secs = time.perf_counter() - started
        stats = {
            "first_step": start,  # a resumed run's figures are its own steps'
            "steps_run": end - start,
            "seconds": secs,
            "courier_decisions_per_s": rows / max(secs, 1e-9),
        }
        if end > start or not (out / "stats.json").exists():  # resuming a finished run keeps its figures
            atomic_write_bytes(out / "stats.json", json.dumps(stats, indent=1).encode())
        return {"config": resolved, "stats": stats, "algo": algo}

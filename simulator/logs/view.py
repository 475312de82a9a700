"""The training view of a log dataset: episode-major arrays for offline multi-agent RL, cached to disk.

Agents (available couriers) vary in number from epoch to epoch, so per-agent data is stored ragged:
the rows of epoch ``t`` are ``agent_offset[t]:agent_offset[t + 1]``. Epochs are episode-major (each
day's epochs contiguous, in order). Features come from the shared encoder
(:func:`dispatch.features.encode`) applied to each decision rebuilt from the log, so training sees
exactly what serving will compute. Actions are candidate slots with ``K`` meaning wait (the logits'
last column). ``next_index[t]`` is the next epoch of the same day, or −1 after the last one.
``terminated`` marks a day's last epoch (the day is over); ``truncated`` is always False because a
logged day is never cut short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tokenize
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dispatch import SCHEMA_VERSION as FEATURE_SCHEMA
from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES, encode
from simulator.logs.dataset import LogDataset

CACHE_DIR = ".cache"
VIEW_VERSION = 1
STATE_FEATURES = ("time_of_day/1440", "open_orders/100", "couriers/100", "agents/100")
# What np.load raises on a damaged .npz (measured by truncating and flipping bytes of one): the zip layer,
# the deflate stream, the .npy header (parsed as a Python literal) and a declared shape the data does not fill.
# RuntimeError covers NotImplementedError (an unknown compression method); MemoryError a garbage shape.
CORRUPT_CACHE = (
    OSError,
    EOFError,
    KeyError,
    ValueError,
    RuntimeError,
    MemoryError,
    SyntaxError,
    zipfile.BadZipFile,
    zlib.error,
    tokenize.TokenError,
)


@dataclass
class TrainingView:
    """Arrays of every logged decision (see the module docstring for the layout)."""

    episode: np.ndarray
    epoch: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_index: np.ndarray
    state: np.ndarray
    agent_offset: np.ndarray
    agent_feats: np.ndarray
    cand_feats: np.ndarray
    cand_mask: np.ndarray
    action: np.ndarray
    behaviour_logp: np.ndarray
    rank: np.ndarray

    @property
    def n_epochs(self) -> int:
        """Number of decision epochs (transitions)."""
        return int(self.reward.shape[0])

    @property
    def n_agent_rows(self) -> int:
        """Number of courier-decisions."""
        return int(self.action.shape[0])

    @property
    def k(self) -> int:
        """Candidate slots per agent; action ``k`` is wait."""
        return int(self.cand_mask.shape[1])


def _cache_key(ds: LogDataset) -> str:
    h = hashlib.sha256()
    files = {e: ds.manifest["episodes"][str(e)]["files"] for e in ds.episodes}
    h.update(json.dumps(files, sort_keys=True).encode())
    h.update(json.dumps([VIEW_VERSION, FEATURE_SCHEMA, AGENT_FEATURES, CANDIDATE_FEATURES, STATE_FEATURES]).encode())
    return h.hexdigest()[:20]


def build(ds: LogDataset, progress: bool = False, on_day: Callable[[int], None] | None = None) -> TrainingView:
    """Encode every logged decision of ``ds``, once every day has been checked.

    ``on_day`` is called with each day's episode number after that day is encoded.
    """
    k = ds.k
    cols: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(TrainingView)}
    offset = 0
    offsets = [0]
    t_index = 0
    # Every day is checked before the first is encoded, so a bad late day is refused before the earlier
    # days' encoding is spent (144 MDRP days: about 3 s to check them all, 20 s to encode them).
    bar = tqdm(total=len(ds.episodes), disable=not progress, unit="day", desc="encode")
    days = ds.days()
    for day in days:
        ep = day.episode
        decisions = list(day.decisions())
        for j, d in enumerate(decisions):
            enc = encode(d.snapshot, d.candidates)
            n = d.candidates.n_agents
            cand = np.zeros((n, k, len(CANDIDATE_FEATURES)), dtype=np.float32)
            mask = np.zeros((n, k), dtype=bool)
            w = min(k, enc.cand.shape[1]) if n else 0
            cand[:, :w] = enc.cand[:, :w]
            mask[:, :w] = enc.cand_mask[:, :w]
            cols["agent_feats"].append(enc.agent)
            cols["cand_feats"].append(cand)
            cols["cand_mask"].append(mask)
            cols["action"].append(np.where(d.choice < 0, k, d.choice).astype(np.int16))
            cols["behaviour_logp"].append(d.logp.astype(np.float32))
            cols["rank"].append(d.rank.astype(np.int32))
            offset += n
            offsets.append(offset)
            last = j == len(decisions) - 1
            cols["episode"].append(np.array([ep], dtype=np.int32))
            cols["epoch"].append(np.array([d.epoch], dtype=np.int32))
            cols["reward"].append(np.array([d.reward], dtype=np.float32))
            cols["terminated"].append(np.array([last]))
            cols["truncated"].append(np.array([False]))
            cols["next_index"].append(np.array([-1 if last else t_index + 1], dtype=np.int64))
            s = d.snapshot
            cols["state"].append(
                np.array([[(s.time % 1440) / 1440, s.n_orders / 100, s.n_couriers / 100, n / 100]], dtype=np.float32)
            )
            t_index += 1
        bar.update()
        if on_day is not None:
            on_day(ep)
    bar.close()
    out = {name: np.concatenate(v) if v else np.zeros(0) for name, v in cols.items() if name != "agent_offset"}
    if not cols["agent_feats"]:
        out["agent_feats"] = np.zeros((0, len(AGENT_FEATURES)), dtype=np.float32)
        out["cand_feats"] = np.zeros((0, k, len(CANDIDATE_FEATURES)), dtype=np.float32)
        out["cand_mask"] = np.zeros((0, k), dtype=bool)
        out["state"] = np.zeros((0, len(STATE_FEATURES)), dtype=np.float32)
    return TrainingView(agent_offset=np.asarray(offsets, dtype=np.int64), **out)


def load(folder: str | Path, cache: bool = True, progress: bool = False) -> TrainingView:
    """The training view of a dataset; the first call encodes and caches, later calls read the cache."""
    ds = LogDataset(folder)
    ds.warn_if_unfinished()
    path = Path(folder) / CACHE_DIR / f"view-{_cache_key(ds)}.npz"
    if cache and path.is_file():
        try:
            with np.load(path) as z:
                cached = TrainingView(**{f.name: z[f.name] for f in fields(TrainingView)})
            if _consistent(cached):
                return cached
        except CORRUPT_CACHE:
            pass  # a corrupt cache is rebuilt, never trusted
        with contextlib.suppress(OSError):  # a read-only folder: the rebuilt view is not saved either
            path.unlink()
    view = build(ds, progress=progress)
    if cache:
        # One temporary file per writer: two trainings started together on one dataset both build the
        # view, and a shared temporary name let one's os.replace take the other's file from under it.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            path.parent.mkdir(exist_ok=True)
            np.savez(tmp, **{f.name: getattr(view, f.name) for f in fields(TrainingView)})
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            print(
                f"warning: training view not cached in {path.parent} ({exc}); it is encoded again next time",
                file=sys.stderr,
            )
    return view


def _consistent(view: TrainingView) -> bool:
    """Whether a view read from the cache has the layout of one :func:`build` writes (lengths agree)."""
    n, m = view.n_epochs, view.n_agent_rows
    per_epoch = ("episode", "epoch", "reward", "terminated", "truncated", "next_index", "state")
    per_agent = ("agent_feats", "cand_feats", "cand_mask", "action", "behaviour_logp", "rank")
    return (
        all(getattr(view, f).shape[:1] == (n,) for f in per_epoch)
        and all(getattr(view, f).shape[:1] == (m,) for f in per_agent)
        and view.agent_offset.shape == (n + 1,)
        and int(view.agent_offset[0]) == 0
        and int(view.agent_offset[-1]) == m
        and bool(np.all(np.diff(view.agent_offset) >= 0))
    )

"""Every algorithm × benchmark dataset × seed, final policy, written as a markdown table.

python -m training.results_games --out docs/results-games.md [--jobs 2] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MATRIX_DATA = ["xor:ab", "xor:ab_ba", "xor:aa_ab_ba", "xor:uniform", "mne:balanced", "mne:rare_optimal"]
BRIDGE_DATA = ["bridge:optimal", "bridge:mix"]
ALGOS = ["bc", "icq", "omiga", "inspo"]
# The `inspo β=0` ablation: no entropy at any step (neither the final β nor its annealed start, A11).
NO_ENTROPY: tuple[tuple[str, Any], ...] = (("beta", 0.0), ("beta_anneal_steps", 0))


@dataclass(frozen=True)
class Job:
    """One training run of the table."""

    label: str
    algo: str
    data: str
    seed: int
    steps: int
    params: tuple[tuple[str, Any], ...] = field(default_factory=tuple)


def budget(data: str, scale: float) -> int:
    """Gradient steps for a dataset: the same for every algorithm on it.

    Bridge gets 8000: at 4000 InSPO's policies on ``bridge:mix`` were still settling (docs/inspo.md §9.2).
    InSPO's entropy annealing (A11) ends 900 steps in, so a ``--scale`` below 0.6 cuts it short on the matrix games.
    """
    return int((8000 if data.startswith("bridge") else 1500) * scale)


def plan(seeds: int, scale: float, only: list[str] | None, algos: list[str] | None = None) -> list[Job]:
    """All runs: every algorithm on every dataset, plus InSPO with β = 0 on the M-NE datasets."""
    jobs = []
    for data in MATRIX_DATA + BRIDGE_DATA:
        if only and not any(data.startswith(o) for o in only):
            continue
        for seed in range(seeds):
            for algo in algos or ALGOS:
                jobs.append(Job(algo, algo, data, seed, budget(data, scale)))
            if data.startswith("mne") and (not algos or "inspo" in algos):
                jobs.append(Job("inspo β=0", "inspo", data, seed, budget(data, scale), NO_ENTROPY))
    # Longest first so that the two workers finish together.
    return sorted(jobs, key=lambda j: -j.steps * (3 if j.algo == "inspo" else 1))


def run_job(job: Job) -> tuple[Job, dict[str, float], float]:
    """Train one run in a scratch directory and return its final evaluation."""
    import torch

    from training.harness import TrainConfig, train

    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            algo=job.algo,
            data=job.data,
            seed=job.seed,
            steps=job.steps,
            eval_every=job.steps,
            ckpt_every=job.steps,
            out=tmp,
            tensorboard=False,
            progress=False,
            algo_params=dict(job.params),
        )
        final = train(cfg)["final"]
    return job, final, time.perf_counter() - start


def fmt(values: list[float], digits: int = 3) -> str:
    """mean ± std (sample std over seeds)."""
    arr = np.asarray(values, float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return f"{arr.mean():.{digits}f} ± {std:.{digits}f}"


def render(
    results: dict[tuple[str, str], list[dict[str, float]]],
    seeds: int,
    scale: float,
    wall: float,
    cmd: str,
    jobs: int,
) -> str:
    """The markdown report."""
    from training.harness import code_version

    labels = [lab for lab in [*ALGOS, "inspo β=0"] if any(k[0] == lab for k in results)]
    lines = [
        "# Offline MARL on the benchmark games",
        "",
        f"Command: `{cmd}`  ",
        f"Code version: `{code_version()}`; {seeds} training seeds per cell (data seed 0); mean ± sample std "
        "over seeds of the **final** policy (no best-during-run selection).  ",
        f"Budget: {budget('xor', scale)} gradient steps on matrix games, "
        f"{budget('bridge', scale)} on Bridge, "
        "batch 256, same for every algorithm; default hyperparameters of each algorithm's config dataclass, "
        "rewards scaled to max |r| = 1 for training.  ",
        f"Wall time {wall / 60:.1f} min with {jobs} worker processes on {os.cpu_count()} CPU cores "
        f"({platform.machine()}).",
        "",
        "Matrix games are evaluated exactly (expected reward of the product policy); Bridge by 100 "
        "Monte-Carlo episodes with actions sampled from the learned (stochastic) policy.",
        "",
    ]

    def table(title: str, datas: list[str], key: str, digits: int, note: str = "") -> None:
        present = [d for d in datas if any(k[1] == d for k in results)]
        if not present:
            return
        lines.extend([f"## {title}", ""] + ([note, ""] if note else []))
        lines.append("| algorithm | " + " | ".join(d.split(":")[1] for d in present) + " |")
        lines.append("|---|" + "---|" * len(present))
        for lab in labels:
            cells = []
            for d in present:
                runs = results.get((lab, d))
                cells.append(fmt([r[key] for r in runs], digits) if runs else "—")
            if any(c != "—" for c in cells):
                lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines.append("")

    xor = [d for d in MATRIX_DATA if d.startswith("xor")]
    mne = [d for d in MATRIX_DATA if d.startswith("mne")]
    table("XOR: per-step reward (optimum 1)", xor, "reward_per_step", 3)
    table(
        "XOR: probability mass on joint actions absent from the data",
        xor,
        "absent_mass",
        4,
        "`uniform` holds every joint action, so its absent mass is 0 by construction.",
    )
    table(
        "M-NE: per-step reward (optimum 10; safe equilibrium 5)",
        mne,
        "reward_per_step",
        2,
        "`inspo β=0`: InSPO with no entropy at any step (β = 0 and no annealed start, docs/inspo.md A11), "
        "everything else unchanged.",
    )
    table("Bridge: mean episode return (100 episodes, sampled actions)", BRIDGE_DATA, "return", 3)
    table(
        "Bridge: return of the same policies acting greedily (argmax; deterministic, one episode)",
        BRIDGE_DATA,
        "greedy_return",
        3,
    )
    table(
        "Bridge: relative gap to the best dataset episode return |R − R_best| / |R_best|",
        BRIDGE_DATA,
        "gap_to_best",
        3,
    )
    table("Bridge: fraction of episodes where both agents reach their goals", BRIDGE_DATA, "success", 2)
    best = {d: results[k][0]["best_dataset_return"] for k in results for d in BRIDGE_DATA if k[1] == d}
    if best:
        lines.append("Best dataset episode return: " + ", ".join(f"`{d}` {v:.4f}" for d, v in best.items()))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the whole protocol and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default="docs/results-games.md", help="markdown file to write")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per cell (default: 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget (default: 1)")
    parser.add_argument("--only", nargs="*", default=None, help="restrict to data prefixes, e.g. xor mne:balanced")
    parser.add_argument("--algos", nargs="*", default=None, help=f"restrict to algorithms (default: {ALGOS})")
    parser.add_argument("--raw", default=None, help="also write every run's final evaluation as JSON here")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    jobs = plan(args.seeds, args.scale, args.only, args.algos)
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        for job, final, _secs in tqdm(pool.imap_unordered(run_job, jobs), total=len(jobs), desc="runs"):
            results[(job.label, job.data)].append(final)
    cmd = "python -m training.results_games " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, args.seeds, args.scale, time.perf_counter() - start, cmd.strip(), args.jobs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from training.harness import atomic_write_bytes

    atomic_write_bytes(out, text.encode())
    if args.raw:
        raw = [{"label": k[0], "data": k[1], "runs": v} for k, v in sorted(results.items())]
        atomic_write_bytes(Path(args.raw), json.dumps(raw, indent=1).encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

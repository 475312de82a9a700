"""Train a dispatch policy on a log dataset (behaviour cloning here; InSPO plugs into the same loop)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from simulator.logs.view import TrainingView
from simulator.logs.view import load as load_view
from training.dispatch.batches import minibatch
from training.dispatch.nets import Scorer


@dataclass
class DispatchTrainConfig:
    """A dispatch training run."""

    data: str = ""
    algo: str = "bc"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    hidden: int = 64
    seed: int = 0
    out: str = "runs/dispatch"
    progress: bool = True
    params: dict[str, Any] = field(default_factory=dict)


def bc_loss(scorer: Scorer, batch: dict[str, Any]) -> torch.Tensor:
    """Mean negative log-likelihood of the logged actions (legal actions only)."""
    obs = batch["obs"]
    logits = scorer(obs["agent"], obs["cand"], obs["cand_mask"])
    logits = logits.masked_fill(~batch["legal"], -1e9)
    logp = torch.log_softmax(logits, -1).gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
    m = batch["agent_mask"].float()
    return -(logp * m).sum() / m.sum().clamp_min(1.0)


def train_bc(cfg: DispatchTrainConfig, view: TrainingView | None = None) -> tuple[Scorer, dict[str, float]]:
    """Behaviour cloning of the logged joint actions with the shared scorer."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    view = view or load_view(cfg.data)
    scorer = Scorer(cfg.hidden)
    opt = torch.optim.Adam(scorer.parameters(), lr=cfg.lr)
    live = np.flatnonzero(np.diff(view.agent_offset) > 0)
    started = time.perf_counter()
    rows = 0
    loss = torch.zeros(())
    for _ in tqdm(range(cfg.steps), disable=not cfg.progress, desc="bc"):
        idx = rng.choice(live, size=min(cfg.batch_size, live.size), replace=False)
        batch = minibatch(view, idx)
        loss = bc_loss(scorer, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows += int(batch["agent_mask"].sum())  # type: ignore[attr-defined]
    secs = time.perf_counter() - started
    return scorer, {"final_loss": float(loss), "seconds": secs, "courier_decisions_per_s": rows / secs}


def save_run(out: str | Path, cfg: DispatchTrainConfig, scorer: Scorer, stats: dict[str, float]) -> Path:
    """Write the run's weights and resolved config."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(scorer.state_dict(), folder / "scorer.pt")
    (folder / "config.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=1))
    return folder

"""Dataset cards: how a log dataset was made and what is in it (Markdown + a return histogram PNG)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from simulator.logs.dataset import LogDataset
from simulator.logs.schema import EPISODE_METRICS

CARD = "CARD.md"
HISTOGRAM = "returns.png"


def _stats(v: np.ndarray) -> str:
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return (
        f"mean {v.mean():.3f}, std {v.std():.3f}, min {v.min():.3f}, q1 {q1:.3f}, median {med:.3f}, "
        f"q3 {q3:.3f}, max {v.max():.3f}"
    )


def _histogram(returns: np.ndarray, recipes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = sorted(set(recipes))
    data = [returns[np.array(recipes) == r] for r in labels]
    ax.hist(data, bins=min(30, max(5, len(returns) // 2)), stacked=True, label=labels)
    ax.set_xlabel("episode return (sum of shared rewards)")
    ax.set_ylabel("days")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # left only where the rename failed


def make_card(folder: str | Path) -> str:
    """Compute the card of a dataset, write CARD.md and returns.png into it, and return the Markdown."""
    ds = LogDataset(folder)
    ds.check()  # the card's whole-table reads below check each part alone, not the tables against each other
    man = ds.manifest
    ep = ds.table("episodes").to_pydict()
    cu = ds.table("couriers").select(["agent", "action", "behaviour_logp", "candidates"]).to_pydict()
    epochs = ds.table("epochs").num_rows
    returns = np.asarray(ep["total_reward"], dtype=np.float64)
    recipes = list(ep["recipe"])
    agent = np.asarray(cu["agent"]) >= 0
    action = np.asarray(cu["action"])[agent]
    logp = np.asarray(cu["behaviour_logp"])[agent]
    n_legal = np.array([sum(1 for c in row if c >= 0) for row, a in zip(cu["candidates"], agent, strict=True) if a])
    k = max((len(row) for row, a in zip(cu["candidates"], agent, strict=True) if a), default=0)
    slots = np.bincount(action + 1, minlength=k + 1) if action.size else np.zeros(k + 1, dtype=np.int64)
    freq = slots / max(slots.sum(), 1)
    slot_entropy = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    args = man.get("args", {})
    lines = [
        f"# Dataset card: {Path(folder).resolve().name}",
        "",
        "## How it was made",
        f"- recipe: `{args.get('recipe')}`; seed {args.get('seed')}; {args.get('days')} day(s) per instance",
        f"- instances: {', '.join(args.get('instances', []))}",
        f"- simulator {man.get('simulator_version')}, code {man.get('code_version')}, "
        f"log schema v{man.get('schema_version')}",
        f"- decision interval {args.get('sim', {}).get('dispatch_interval')} min; candidates {args.get('candidates')}",
        f"- reward weights {args.get('reward')}",
        f"- complete: {man.get('complete')}",
        "",
        "## Size",
        f"- days: {len(returns)}; decision epochs: {epochs}; courier-decisions (agent rows): {int(agent.sum())}",
        "",
        "## Return distribution (per day)",
        f"- {_stats(returns)}" if returns.size else "- (no days)",
        f"- histogram: `{HISTOGRAM}`",
        "",
        "## Per-recipe MDRP metrics (mean over days)",
        "",
        "| recipe | days | return | " + " | ".join(EPISODE_METRICS) + " |",
        "|" + "---|" * (3 + len(EPISODE_METRICS)),
    ]
    for r in sorted(set(recipes)):
        idx = [i for i, x in enumerate(recipes) if x == r]
        vals = [np.nanmean([ep[m][i] for i in idx]) for m in EPISODE_METRICS]
        lines.append(f"| {r} | {len(idx)} | {returns[idx].mean():.2f} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    lines += [
        "",
        "## Actions, entropy and coverage",
        f"- behaviour entropy estimate E[−log μ(a|s, a_<i)]: {float(-logp.mean()) if logp.size else 0:.4f} nats "
        "(unbiased: the mean negative log-probability of the logged actions)",
        f"- wait share: {float((action < 0).mean()) if action.size else 0:.4f}; mean legal candidates per agent: "
        f"{float(n_legal.mean()) if n_legal.size else 0:.2f} of K={k}",
        f"- entropy of the chosen-slot histogram: {slot_entropy:.4f} nats (wait, slot 0..K−1)",
        "- chosen-slot shares (wait first): " + ", ".join(f"{x:.3f}" for x in freq),
        f"- slots ever chosen: {int((slots[1:] > 0).sum())} of {k}",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(folder)
    tmp = out / (CARD + ".tmp")
    writing = HISTOGRAM  # named in the error: the file that could not be written
    try:
        if returns.size:
            _histogram(returns, recipes, out / HISTOGRAM)
        writing = CARD
        tmp.write_text(text)
        os.replace(tmp, out / CARD)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        # A read-only dataset still gets its card, printed instead of written.
        raise CardNotWritten(text, f"{out}: cannot write {writing} ({exc.strerror or exc})") from None
    return text


class CardNotWritten(OSError):
    """The card was computed (``text``) but could not be written into the dataset folder."""

    def __init__(self, text: str, message: str) -> None:
        super().__init__(message)
        self.text = text

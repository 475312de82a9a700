"""The A/B report: Markdown with tables and PNG plots, plus the same numbers as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.ab.files import fmt as _fmt
from simulator.ab.files import write_json, write_text
from simulator.ab.stats import COMMON, DAY_METRICS, METRICS, Paired, analyse, common_ctd, verdict

if TYPE_CHECKING:
    from simulator.ab.run import ABConfig, Cell

REPORT_VERSION = 2  # 2: the ctd_common_mean metric


def _pairs(results: dict[Cell, dict[str, Any]]) -> list[tuple[str, int, dict[str, Any], dict[str, Any]]]:
    """(instance, seed, result A, result B) per day, in cell order."""
    by_day: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for c, r in results.items():
        by_day.setdefault((c.instance, c.seed), {})[c.arm] = r
    return [(i, s, arms["a"], arms["b"]) for (i, s), arms in by_day.items()]


def _delivered(result: dict[str, Any]) -> np.ndarray:
    """Click-to-door of the orders a cell delivered."""
    ctd = np.asarray(result["order_ctd"], dtype=np.float64)
    return ctd[ctd >= 0]


def _number(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _values(ra: dict[str, Any], rb: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Every metric of METRICS for arm A and arm B of one day (the common-orders one computed from both)."""
    # A metric undefined on a day (NaN: no order delivered) comes back from the cell's JSON as null.
    va = {m: _number(ra["metrics"][m]) for m in DAY_METRICS}
    vb = {m: _number(rb["metrics"][m]) for m in DAY_METRICS}
    va[COMMON], vb[COMMON] = common_ctd(ra["order_ctd"], rb["order_ctd"])
    return va, vb


def _plots(out: Path, pairs: list[tuple[str, int, dict[str, Any], dict[str, Any]]], label_a: str, label_b: str) -> None:
    """diffs.png, ctd.png and hourly.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.25 * len(pairs) + 2.5))
    labels = [f"{i if len(i) < 24 else '…' + i[-22:]} s{s}" for i, s, _, _ in pairs]
    y = np.arange(len(pairs))
    for ax, m in zip(axes, ("ctd_mean", "undelivered_pct"), strict=True):
        d = np.array([b["metrics"][m] for *_, b in pairs], dtype=np.float64) - np.array(
            [a["metrics"][m] for _, _, a, _ in pairs], dtype=np.float64
        )
        ax.barh(y, d, color=np.where(d < 0, "tab:green", "tab:red"))
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"B − A {METRICS[m][0]} ({METRICS[m][1]})")
    fig.suptitle("Per-day paired differences (negative: B lower)")
    fig.tight_layout()
    fig.savefig(out / "diffs.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ca = np.concatenate([_delivered(a) for _, _, a, _ in pairs])
    cb = np.concatenate([_delivered(b) for _, _, _, b in pairs])
    hi = max(float(ca.max(initial=0)), float(cb.max(initial=0)), 1.0)
    bins = [float(x) for x in np.arange(0, hi + 3, 2)]
    ax.hist(ca, bins=bins, histtype="step", lw=1.5, label=f"A {label_a}", density=True)
    ax.hist(cb, bins=bins, histtype="step", lw=1.5, label=f"B {label_b}", density=True)
    ax.set_xlabel("click-to-door (min), delivered orders of every day")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ctd.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, lab in (("A", label_a), ("B", label_b)):
        arms = [p[2] if arm == "A" else p[3] for p in pairs]
        s = np.sum([np.asarray(r["hour_ctd_sum"]) for r in arms], axis=0)
        n = np.sum([np.asarray(r["hour_count"]) for r in arms], axis=0)
        hours = np.flatnonzero(n)
        ax.plot(hours, s[hours] / n[hours], marker="o", label=f"{arm} {lab}")
    ax.set_xlabel("hour of the day (order placement)")
    ax.set_ylabel("mean click-to-door (min)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "hourly.png", dpi=110)
    plt.close(fig)


def _markdown(config: ABConfig, rows: list[Paired], pairs: list[Any], identical: bool) -> str:
    level = round(100 * (1 - config.alpha))
    n_inst = len({p[0] for p in pairs})
    noise = (
        "off (days exactly as published)"
        if config.noise.off or config.seeds == 1
        else f"replicates ≥ 1 perturb preparation (σ={config.noise.prep_sigma}) "
        f"and speed (σ={config.noise.speed_sigma})"
    )
    out = [
        "# A/B report",
        "",
        f"- **A**: `{config.a}`",
        f"- **B**: `{config.b}`",
        f"- days: {len(pairs)} = {n_inst} instance(s) × {config.seeds} replicate seed(s); common random numbers; "
        f"noise {noise}",
        f"- decision interval {config.interval} min; family-wise α = {config.alpha} (Holm over {len(rows)} metrics); "
        f"bootstrap {config.n_boot} resamples (seeded)",
        "",
        "## Verdicts",
        "",
    ]
    if identical:
        out += ["**A and B produced identical results on every day (all paired differences are exactly 0).**", ""]
    out += [f"- {verdict(r, config.alpha)}" for r in rows]
    out += [
        "",
        "## Paired analysis (B − A)",
        "",
        f"| metric | n | mean A | mean B | B − A | {level}% CI (t) | {level}% CI (bootstrap) | d_z | p | p (Holm) |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.metric} | {r.n} | {_fmt(r.mean_a)} | {_fmt(r.mean_b)} | {_fmt(r.diff)} | "
            f"{_fmt(r.t_low)} … {_fmt(r.t_high)} | {_fmt(r.boot_low)} … {_fmt(r.boot_high)} | {_fmt(r.dz, 2)} | "
            f"{_fmt(r.p, 2)} | {_fmt(r.p_holm, 2)} |"
        )
    out += [
        "",
        "## Plots",
        "",
        "![per-day paired differences](diffs.png)",
        "",
        "![click-to-door distributions](ctd.png)",
        "",
        "![hourly mean click-to-door](hourly.png)",
        "",
        "## Per day",
        "",
        "| instance | seed | CtD A | CtD B | undeliv % A | undeliv % B | on-time % A | on-time % B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for inst, seed, a, b in pairs:
        ma, mb = a["metrics"], b["metrics"]
        out.append(
            f"| {a['instance_name']} | {seed} | {_fmt(ma['ctd_mean'], 2)} | {_fmt(mb['ctd_mean'], 2)} | "
            f"{_fmt(ma['undelivered_pct'], 2)} | {_fmt(mb['undelivered_pct'], 2)} | {_fmt(ma['on_time_pct'], 1)} | "
            f"{_fmt(mb['on_time_pct'], 1)} |"
        )
        del inst
    out += ["", "Machine-readable: `report.json`. Method: `docs/ab-replay.md`.", ""]
    return "\n".join(out)


def write_report(out: Path, config: ABConfig, results: dict[Cell, dict[str, Any]]) -> dict[str, Any]:
    """Write report.md, report.json and the plots for a complete A/B; returns the JSON payload."""
    pairs = _pairs(results)
    values = [_values(ra, rb) for _, _, ra, rb in pairs]
    a = {m: np.array([va[m] for va, _ in values], dtype=np.float64) for m in METRICS}
    b = {m: np.array([vb[m] for _, vb in values], dtype=np.float64) for m in METRICS}
    rows = analyse(a, b, config.alpha, config.n_boot)
    identical = all(p[2]["metrics"] == p[3]["metrics"] and p[2]["order_ctd"] == p[3]["order_ctd"] for p in pairs)
    payload = {
        "format": "dispatch-ab-report",
        "version": REPORT_VERSION,
        "complete": True,
        "args": json.loads(json.dumps(config.args())),
        "days": len(pairs),
        "identical": identical,
        "metrics": [r.to_dict() for r in rows],
        "verdicts": {r.metric: verdict(r, config.alpha) for r in rows},
        "per_day": [
            {
                "instance": inst,
                "seed": seed,
                "a": va,
                "b": vb,
                "seconds": [ra["seconds"], rb["seconds"]],
            }
            for (inst, seed, ra, rb), (va, vb) in zip(pairs, values, strict=True)
        ],
    }
    _plots(out, pairs, config.a, config.b)
    write_json(out / "report.json", payload, indent=1)
    # The Markdown goes last: its presence means the report is whole.
    write_text(out / "report.md", _markdown(config, rows, pairs, identical))
    return payload

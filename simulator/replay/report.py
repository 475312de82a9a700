"""The replay report: Markdown (+ latency and re-simulation plots) and the same numbers as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.ab.files import fmt as _fmt
from simulator.ab.files import write_json, write_text
from simulator.ab.stats import DAY_METRICS
from simulator.replay import resim, shadow

if TYPE_CHECKING:
    from simulator.replay.run import ReplayConfig

ESTIMATORS = ("ips", "snips", "dr", "dm")


def _plots(out: Path, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """latency.png (shadow) and resim.png (re-simulation); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "shadow" in results:
        lat = np.concatenate([np.asarray(d["latency_ms"], dtype=np.float64) for d in results["shadow"]])
        if lat.size:
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.hist(lat, bins=60, log=True)
            ax.set_xlabel("decision latency (ms)")
            ax.set_ylabel("decisions")
            fig.tight_layout()
            fig.savefig(out / "latency.png", dpi=110)
            plt.close(fig)
            written.append("latency.png")
    if "resim" in results:
        days = results["resim"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.25 * len(days) + 2.5))
        y = np.arange(len(days))
        for ax, m in zip(axes, ("ctd_mean", "undelivered_pct"), strict=True):
            d = np.array([x["policy"][m] for x in days], dtype=np.float64) - np.array(
                [x["logged"][m] for x in days], dtype=np.float64
            )
            ax.barh(y, d, color=np.where(d < 0, "tab:green", "tab:red"))
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(y, [x["name"] for x in days], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(f"policy − logged {DAY_METRICS[m][0]} ({DAY_METRICS[m][1]})")
        fig.tight_layout()
        fig.savefig(out / "resim.png", dpi=110)
        plt.close(fig)
        written.append("resim.png")
    return written


def _shadow_md(s: dict[str, Any]) -> list[str]:
    lat = s["latency_ms"]
    lines = [
        "## Shadow replay",
        "",
        f"- {s['decisions']} decisions over {s['days']} day(s), {s['agent_decisions']} courier decisions",
        f"- **per-courier agreement {100 * s['per_courier_agreement']:.2f}%**, "
        f"**joint agreement {100 * s['joint_agreement']:.2f}%** (assignments compared as courier → order ids)",
        f"- latency ms: mean {_fmt(lat['mean'])}, p50 {_fmt(lat['p50'])}, p90 {_fmt(lat['p90'])}, "
        f"p99 {_fmt(lat['p99'])}, max {_fmt(lat['max'])}",
        f"- errors: {len(s['errors'])}; infeasible answers: {s['infeasible']}",
    ]
    lines += [f"  - {e['day']} decision {e['epoch']} (t={e['time']}): {e['error']}" for e in s["errors"][:10]]
    lines += [f"  - infeasible {e['day']} decision {e['epoch']}: {e['error']}" for e in s["infeasible_examples"]]
    if s["worst"]:
        lines += ["", "Decisions that differ most:", "", "| day | decision | t | couriers differing | examples |"]
        lines.append("|---|---:|---:|---:|---|")
        for w in s["worst"]:
            ex = "; ".join(
                f"{c}: logged {'+'.join(v['logged']) or 'wait'}, policy {'+'.join(v['policy']) or 'wait'}"
                for c, v in list(w["couriers"].items())[:3]
            )
            lines.append(f"| {w['day']} | {w['epoch']} | {w['time']} | {w['differ']}/{w['agents']} | {ex} |")
    return [*lines, "", "![latency](latency.png)", ""]


def _resim_md(r: dict[str, Any], days: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Counterfactual re-simulation",
        "",
        f"{r['days']} day(s) re-run under the policy (same orders and couriers); difference = policy − logged.",
        "",
        "| metric | logged | policy | difference | 95% CI (t) | p |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for m, v in r["metrics"].items():
        lines.append(
            f"| {m} | {_fmt(v['mean_a'])} | {_fmt(v['mean_b'])} | {_fmt(v['diff'])} | "
            f"{_fmt(v['t_low'])} … {_fmt(v['t_high'])} | {_fmt(v['p'], 2)} |"
        )
    lines += ["", "| day | CtD logged | CtD policy | undeliv % logged | undeliv % policy |"]
    lines.append("|---|---:|---:|---:|---:|")
    for d in days:
        lo, po = d["logged"], d["policy"]
        lines.append(
            f"| {d['name']} | {_fmt(lo['ctd_mean'], 2)} | {_fmt(po['ctd_mean'], 2)} | "
            f"{_fmt(lo['undelivered_pct'], 2)} | {_fmt(po['undelivered_pct'], 2)} |"
        )
    return [*lines, "", "![re-simulation](resim.png)", ""]


def _ope_md(e: dict[str, Any]) -> list[str]:
    level = round(100 * e["level"])
    w = e["weights"]
    lines = [
        "## Off-policy estimates (per-decision reward)",
        "",
        f"{e['decisions']} logged decisions over {e['days']} day(s). Estimand: the mean shared reward of one "
        "decision when the target acts at the logged states (see docs/ab-replay.md for its limits).",
        "",
        f"| estimator | value | {level}% CI |" + (" covers simulator truth |" if "truth" in e else ""),
        "|---|---:|---|" + ("---|" if "truth" in e else ""),
        f"| logged (behaviour) | {_fmt(e['behaviour']['value'], 4)} | "
        f"{_fmt(e['behaviour']['low'], 4)} … {_fmt(e['behaviour']['high'], 4)} |" + (" |" if "truth" in e else ""),
    ]
    for k in ESTIMATORS:
        v = e[k]
        cover = f" {'yes' if v.get('covers_truth') else 'NO'} |" if "truth" in e else ""
        lines.append(f"| {k.upper()} | {_fmt(v['value'], 4)} | {_fmt(v['low'], 4)} … {_fmt(v['high'], 4)} |{cover}")
    if "truth" in e:
        lines += ["", f"Simulator ground truth of the estimand: {e['truth']:.4f}."]
    lines += [
        "",
        f"Importance weights: mean {_fmt(w['mean'])}, max {_fmt(w['max'])}, zero {100 * w['zero_share']:.1f}%, "
        f"effective sample size {_fmt(w['ess'], 1)} of {e['decisions']}.",
        "",
    ]
    if not w["support_ok"]:
        lines += [
            f"**Support warning**: the mean weight's interval ({_fmt(w['mean_low'])} … {_fmt(w['mean_high'])}) lies "
            "below 1, so the target takes actions the logging policy never could; IPS and SNIPS are biased.",
            "",
        ]
    return lines


def write_report(out: Path, config: ReplayConfig, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Write report.md, report.json and plots for a complete replay; returns the JSON payload."""
    from simulator.replay.ope import estimate

    payload: dict[str, Any] = {
        "format": "dispatch-replay-report",
        "version": 1,
        "complete": True,
        "args": config.args(),
    }
    if "shadow" in results:
        payload["shadow"] = shadow.summarise(results["shadow"], config.shadow.top)
    if "resim" in results:
        payload["resim"] = resim.summarise(results["resim"])
        payload["resim"]["per_day"] = [{k: d[k] for k in ("name", "logged", "policy")} for d in results["resim"]]
    if "ope" in results:
        payload["ope"] = estimate(results["ope"])
    _plots(out, results)
    src = config.source
    where = f"logs `{src.get('logs')}`" if src.get("logs") else f"instances (history played by `{src.get('baseline')}`)"
    md = ["# Replay report", "", f"- policy: `{config.policy}`", f"- days: {where}", ""]
    if "shadow" in payload:
        md += _shadow_md(payload["shadow"])
    if "resim" in payload:
        md += _resim_md(payload["resim"], results["resim"])
    if "ope" in payload:
        md += _ope_md(payload["ope"])
    md += ["Machine-readable: `report.json`. Method: `docs/ab-replay.md`.", ""]
    write_json(out / "report.json", payload, indent=1)
    write_text(out / "report.md", "\n".join(md))
    return payload

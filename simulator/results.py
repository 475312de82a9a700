"""``python -m simulator.results``: every heuristic over all 240 public instances → docs/results.md.

Per-instance metrics are cached in a JSON file beside the report, so an interrupted run resumes and a
re-render costs nothing. Tables: overall (mean across instances of each instance's mean, the
published convention), per instance class, and next to the published Reyes et al. figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from simulator.batch import Task, run_many
from simulator.cli_paths import path_arg
from simulator.engine import SimConfig
from simulator.epochs import add_interval_option
from simulator.heuristics import NAMES
from simulator.instance import list_instances, load
from simulator.metrics import floor_ctd
from simulator.report import markdown_table, mean_metrics

KEEP = (
    "orders",
    "undelivered_pct",
    "ctd_mean",
    "ctd_p90",
    "overage_mean",
    "ready_to_pickup_mean",
    "ready_to_door_mean",
    "on_time_pct",
    "utilisation_mean",
    "orders_per_hour_mean",
    "bundle_size_mean",
    "cost_per_order",
    "guaranteed_share",
)
PUBLISHED = (
    "Published Reyes et al. (2018), all 240: CtD mean 32.74, CtD p90 49.3, overage 2.77, "
    "RtP 1.93, utilisation 0.63, $11.42 per order, 1.09 orders per bundle, 0.25% undelivered; "
    "seed-0 o50/r50 (16 instances): CtD 31.88, RtP 1.40."
)

CLASSES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("size", lambda n: n[1:4]),
    ("travel", lambda n: "t75" if "t75" in n else "t100"),
    ("schedule", lambda n: "s1" if "s1" in n else "s2"),
    ("prep", lambda n: "p125" if n.endswith("p125") else "p100"),
    ("seed", lambda n: n[0]),
)


SIM_KEY = "_sim"  # in a metrics cache: the engine settings its metrics were measured under


def sim_stamp(config: SimConfig) -> dict[str, int]:
    """The engine settings a cached metric depends on, as stored under SIM_KEY."""
    return {"dispatch_interval": config.dispatch_interval, "courier_lookahead": config.courier_lookahead}


def load_cache(path: Path, config: SimConfig) -> dict[str, dict[str, dict[str, float]]]:
    """A metrics cache measured under ``config``, stamped with it; empty (said on stderr) if made under others.

    Metrics of another decision cadence are other metrics: mixing them would compare policies run under
    different rules, so a cache without the stamp (older than it) or with another one starts over.
    """
    fresh: dict[str, dict[str, dict[str, float]]] = {SIM_KEY: sim_stamp(config)}  # type: ignore[dict-item]
    if not path.is_file():
        return fresh
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"{path}: unreadable ({exc}); not reused", file=sys.stderr)
        return fresh
    if not isinstance(data, dict):
        print(f"{path}: holds a JSON {type(data).__name__}, not a metrics object; not reused", file=sys.stderr)
        return fresh
    found = data.get(SIM_KEY)
    if found != sim_stamp(config):
        then = "no engine settings (older than the stamp)" if found is None else f"engine settings {found}"
        print(f"{path}: measured under {then}, not {sim_stamp(config)}; not reused", file=sys.stderr)
        return fresh
    return data


def save_cache(path: Path, data: dict[str, dict[str, dict[str, float]]]) -> None:
    """Write a per-policy, per-instance metrics cache atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
    os.replace(tmp, path)


def collect(
    policies: list[str], instances: list[str], cache: Path, jobs: int | None, config: SimConfig
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-policy, per-instance metrics under ``config``; runs only what the cache lacks, saving after each policy."""
    data = load_cache(cache, config)
    for pol in policies:
        have = data.setdefault(pol, {})
        todo = [i for i in instances if i not in have]
        if todo:
            print(f"{pol}: {len(todo)} instance(s) to run", file=sys.stderr)
            for r in run_many([Task(i, pol, config=config) for i in todo], jobs=jobs):
                have[r.instance_name] = {k: r.metrics[k] for k in KEEP}
            save_cache(cache, data)
    return data


def floors(instances: list[str]) -> dict[str, tuple[float, float, int]]:
    """Per instance: mean click-to-door floor, % of orders no dispatcher can deliver in time, max click-to-door."""
    out = {}
    for name in instances:
        inst = load(name)
        f = floor_ctd(inst)
        out[name] = (float(f.mean()), 100.0 * float((f > inst.params.max_ctd).mean()), inst.params.max_ctd)
    return out


def cadence(config: SimConfig) -> str:
    """'every minute' or 'every N minutes', for a report's opening line."""
    n = config.dispatch_interval
    return "every minute" if n == 1 else f"every {n} minutes"


def charged_ctd(metrics: dict[str, float], max_ctd: int) -> float:
    """Mean click-to-door over all orders, an undelivered one counted at the maximum click-to-door.

    A dispatcher that drops hard orders lowers its plain CtD mean (taken over delivered orders only);
    this figure does not reward that.
    """
    lost = metrics["undelivered_pct"] / 100.0
    if lost >= 1.0:
        return float(max_ctd)  # nothing delivered: the CtD mean is undefined (NaN)
    return metrics["ctd_mean"] * (1.0 - lost) + max_ctd * lost


def render(
    data: dict[str, dict[str, dict[str, float]]], policies: list[str], instances: list[str], config: SimConfig
) -> str:
    """The Markdown report."""
    fl = floors(instances)
    lines = [
        "# Heuristic dispatchers on the 240 public MDRP instances",
        "",
        f"Produced by `make results` (`python -m simulator.results`). Decision epochs {cadence(config)}. "
        "Every figure is the mean across instances of each instance's own value (the published convention). "
        "`reyes` parameters were tuned on instance seeds 0–5 only.",
        "",
        PUBLISHED,
        "",
        f"Physical floor over the same instances: mean per-order CtD floor (prep + direct travel + service) "
        f"{np.mean([v[0] for v in fl.values()]):.2f} min; orders no dispatcher can deliver within the maximum "
        f"click-to-door: {np.mean([v[1] for v in fl.values()]):.3f}%.",
        "",
        f"## All {len(instances)} instances",
        "",
        markdown_table(policies, [mean_metrics([data[p][i] for i in instances]) for p in policies]),
        "",
        "Mean click-to-door with every undelivered order counted at the maximum click-to-door (so dropping "
        "hard orders does not pay): "
        + ", ".join(f"{p} {np.mean([charged_ctd(data[p][i], fl[i][2]) for i in instances]):.2f}" for p in policies)
        + " min.",
        "",
    ]
    seed0 = [i for i in instances if i.startswith("0") and i[1:4] in ("o50", "r50")]
    if seed0:
        lines += [
            "## Seed 0, o50 and r50 (16 instances; published heuristic CtD 31.88, clairvoyant 30.67)",
            "",
            markdown_table(policies, [mean_metrics([data[p][i] for i in seed0]) for p in policies]),
            "",
        ]
    for title, key in CLASSES:
        values = sorted({key(i) for i in instances})
        lines += [f"## By {title}", ""]
        for v in values:
            members = [i for i in instances if key(i) == v]
            lines += [
                f"### {title} = {v} ({len(members)} instances)",
                "",
                markdown_table(policies, [mean_metrics([data[p][i] for i in members]) for p in policies]),
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the all-instance comparison and write the Markdown report."""
    ap = argparse.ArgumentParser(prog="python -m simulator.results", description=__doc__)
    ap.add_argument("--out", type=path_arg, default=Path("docs/results.md"), help="Markdown report path")
    ap.add_argument("--cache", type=path_arg, help="per-instance metrics JSON (default: beside --out)")
    ap.add_argument("--policies", default=",".join(NAMES), help="comma-separated heuristics")
    ap.add_argument("--instances", default="*", help="glob over public instance names (default all)")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    ap.add_argument("--fresh", action="store_true", help="ignore the cache and rerun everything")
    add_interval_option(ap)
    args = ap.parse_args(argv)
    if args.interval < 1:
        ap.error("--interval must be at least 1")
    policies = [p for p in args.policies.split(",") if p]
    instances = list_instances(args.instances)
    cache = args.cache or args.out.with_suffix(".json")
    if args.fresh and cache.exists():
        cache.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = SimConfig(dispatch_interval=args.interval)
    data = collect(policies, instances, cache, args.jobs or None, config)
    text = render(data, policies, instances, config)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, args.out)
    print(text.split("## Seed 0")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
